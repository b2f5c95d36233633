"""Pure curriculum arithmetic and the `plan` report's numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import CONFIGS, REPO, base_config, write_yaml
from yxanul_ray.cli import main
from yxanul_ray.config import load_job
from yxanul_ray.curriculum import check_world_size, lr_at, plan_curriculum, plan_stage
from yxanul_ray.specs import OptimizerSpec

USER_CONFIG = os.path.join(CONFIGS, "yxanul_270m_progressive_curriculum.yaml")


def test_plan_prints_all_ten_stages_and_target():
    proc = subprocess.run([sys.executable, "-m", "yxanul_ray", "plan", USER_CONFIG], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("Basic Patterns", "Sentences", "Paragraphs", "Extended Context", "Reasoning Development",
                 "Complex Patterns", "Integration", "Deep Understanding", "Expert Reasoning", "Final Polish"):
        assert name in out
    assert "1,000,000,000 tokens" in out
    # steps: ceil(tokens / tokens_per_step) per stage, summed
    assert "7,812 optimizer steps" in out
    # the user's 4090 figures: 10+20+30+40 M at 150k, 75+100+125 M at 100k, 600 M at 50k
    expected_h = (100e6 / 150e3 + 300e6 / 100e3 + 600e6 / 50e3) / 3600
    assert f"({expected_h:.2f} h)" in out


def test_plan_steps_and_exact_budgets():
    job = load_job(USER_CONFIG)
    plans = plan_curriculum(job.curriculum)
    for st, p in zip(job.curriculum.stages, plans):
        trained = sum(p.step_tokens(k) for k in range(p.steps))
        assert trained == st.tokens  # every stage ends exactly on its budget
        assert p.rows_per_step % job.run.workers == 0
        assert 0 <= p.last_masked_tokens < st.seq_len  # only the last row is cut: no row is drawn to be masked
    assert plans[-1].end_tokens == 1_000_000_000
    assert plans[0].steps == 77  # 10M / 131,072 = 76.3 -> 76 full steps + 1 partial


def test_plan_stage_divisible_budget_has_no_partial_step():
    job = load_job(USER_CONFIG)
    st = job.curriculum.stages[0]
    p = plan_stage(st, 0, 0)
    assert (p.full_steps, p.last_rows * 8 - p.last_masked_tokens) == (76, 10_000_000 - 76 * 131_072)
    whole = plan_stage(st.__class__(**{**st.__dict__, "tokens": 3 * 131_072}), 0, 0)
    assert (whole.full_steps, whole.last_rows, whole.last_masked_tokens, whole.steps) == (3, 0, 0, 3)


def test_plan_rejects_batch_not_divisible_by_workers():
    job = load_job(USER_CONFIG)
    with pytest.raises(ValueError, match="does not divide among 3 workers"):
        check_world_size(job.curriculum, 3)
    check_world_size(job.curriculum, 8)


def test_stage_plans_tile_the_target_without_gaps():
    job = load_job(USER_CONFIG)
    plans = plan_curriculum(job.curriculum)
    assert plans[0].start_tokens == 0 and plans[-1].end_tokens == job.curriculum.target_tokens
    for before, after in zip(plans, plans[1:]):
        assert before.end_tokens == after.start_tokens and after.index == before.index + 1


def test_lr_warmup_then_monotone_decay_to_floor():
    opt = OptimizerSpec(peak_lr=1e-3, warmup_tokens=1000, decay="cosine", min_lr_ratio=0.1)
    warm = [lr_at(opt, 10_000, t) for t in range(0, 1000, 100)]
    assert warm == sorted(warm) and warm[-1] <= 1e-3
    decay = [lr_at(opt, 10_000, t) for t in range(1000, 10_001, 500)]
    assert decay == sorted(decay, reverse=True)
    assert decay[0] == pytest.approx(1e-3) and decay[-1] == pytest.approx(1e-4)
    lin = OptimizerSpec(peak_lr=1e-3, warmup_tokens=0, decay="linear", min_lr_ratio=0.0)
    assert lr_at(lin, 100, 50) == pytest.approx(5e-4)
    assert lr_at(lin, 100, 50, lr_scale=0.5) == pytest.approx(2.5e-4)


def test_plan_warns_about_overlap(tmp_path, placeholder_sources, capsys):
    data = base_config(placeholder_sources)
    data["curriculum"]["overlap"] = 0.5
    path = write_yaml(str(tmp_path / "job.yaml"), data)
    assert main(["plan", path]) == 0
    out = capsys.readouterr().out
    assert "warning: stage 1 (a): overlap 50% trains 2,048 target positions from only ~1,024 distinct" in out


def test_plan_uses_configured_throughput(tmp_path, placeholder_sources, capsys):
    data = base_config(placeholder_sources)
    for st in data["curriculum"]["stages"]:
        st["estimate_tokens_per_s"] = 1.0
    path = write_yaml(str(tmp_path / "job.yaml"), data)
    assert main(["plan", path]) == 0
    assert "estimated 3h58m" in capsys.readouterr().out  # 14,336 s
