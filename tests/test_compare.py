"""`yxanul-ray compare`: the arms derived from a curriculum differ only where they should, the
flags are refused before any work, the report's arithmetic, and a whole comparison on a real
Ray cluster (every arm through the train path, every point measured)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import CONFIGS, REPO, demo_subset, write_yaml
from yxanul_ray.arms import Arm, arm_job, average_mix, parse_arms, scale_job
from yxanul_ray.cli import main
from yxanul_ray.compare import compare_spec, comparison_base
from yxanul_ray.compare_report import matched_points, reach, summarize, verdict
from yxanul_ray.config import load_job
from yxanul_ray.curriculum import lr_at, plan_curriculum

DEMO = os.path.join(CONFIGS, "demo.yaml")
CPU = os.path.join(CONFIGS, "compare_cpu.yaml")


# ---- the arms ---------------------------------------------------------------------------------


def test_parse_arms_adds_flat_and_refuses_what_is_not_an_arm():
    assert [a.name for a in parse_arms("curriculum,compressed:0.75")] == ["flat", "curriculum", "compressed:0.75"]
    assert parse_arms("flat, seq-only,mix-only,flat") == [Arm("flat"), Arm("seq-only"), Arm("mix-only")]
    for bad, problem in [("curriculum,fast", "'fast' is not an arm"), ("compressed:1.5", "must be in (0, 1]"),
                         ("compressed:0", "must be in (0, 1]"), ("compressed", "takes a scale"),
                         ("flat:2", "only compressed takes a value"), (",", "no arms given")]:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            parse_arms(bad)


def test_flat_arm_is_the_curriculum_at_the_last_seq_len_with_its_average_mix(demo_paths_in_cwd):
    job = load_job(DEMO, ["run.workers=1"])
    cur = job.curriculum
    flat = arm_job(job, Arm("flat"), 0)
    mix = average_mix(cur.stages)
    assert math.isclose(sum(mix.values()), 1.0)
    assert mix == pytest.approx({s: sum(st.tokens * st.mix.get(s, 0) for st in cur.stages) / 400_000
                                 for s in ("fineweb", "math", "code")})
    stages = flat.curriculum.stages
    assert {st.seq_len for st in stages} == {2048} and all(st.mix == mix for st in stages)
    assert flat.curriculum.target_tokens == sum(st.tokens for st in stages) == cur.target_tokens
    # The curriculum's tokens per step in whole rows of 2048 (1 row for the first six stages'
    # 2,048 tokens, then 2, 3, 6, 8): the same step sizes at the same token points, so about
    # as many steps; identical neighbours merged, so no switch it does not need.
    assert [(st.global_batch, st.tokens) for st in stages] == [(1, 110_000), (2, 50_000), (3, 60_000),
                                                               (6, 80_000), (8, 100_000)]
    steps = [sum(p.steps for p in plan_curriculum(j.curriculum)) for j in (flat, job)]
    assert steps == [91, 92]  # a merged stage has one partly masked step, not six
    # Same model, optimizer, LR by tokens, held-out documents and initial weights (run.seed).
    assert flat.model == job.model and flat.optimizer == job.optimizer and flat.run.seed == job.run.seed
    assert all(flat.sources[s].validation_docs == job.sources[s].validation_docs for s in job.sources)
    with_two = arm_job(load_job(DEMO), Arm("flat"), 1)  # two workers: a multiple of 2 rows
    assert all(st.global_batch % 2 == 0 for st in with_two.curriculum.stages)
    assert with_two.run.seed == job.run.seed + 1 and with_two.run.name == "demo-flat-seed1"


def test_seq_only_and_mix_only_change_one_thing_each(demo_paths_in_cwd):
    job = load_job(DEMO, ["run.workers=1"])
    seq_only = arm_job(job, Arm("seq-only"), 0).curriculum.stages
    assert [st.seq_len for st in seq_only] == [st.seq_len for st in job.curriculum.stages]
    assert all(st.mix == average_mix(job.curriculum.stages) for st in seq_only)
    mix_only = arm_job(job, Arm("mix-only"), 0).curriculum.stages
    assert {st.seq_len for st in mix_only} == {2048}
    # the ladder's mixes at its token boundaries (the first two stages share one mix: merged)
    assert [st.mix for st in mix_only] == [st.mix for st in job.curriculum.stages[1:]]
    assert [st.tokens for st in mix_only] == [12_000] + [st.tokens for st in job.curriculum.stages[2:]]


def test_compressed_arm_scales_budgets_warmup_and_so_the_lr_schedule(demo_paths_in_cwd):
    job = load_job(DEMO)
    small = arm_job(job, Arm("compressed", 0.75), 0)
    assert small.curriculum.target_tokens == 300_000
    assert [st.tokens for st in small.curriculum.stages] == [3000, 6000, 9000, 12000, 22500, 30000, 37500, 45000,
                                                             60000, 75000]
    assert small.optimizer.warmup_tokens == 6000
    # the same LR shape at the same share of its own target
    for share in (0.1, 0.5, 0.9, 0.99):
        assert lr_at(small.optimizer, 300_000, int(share * 300_000)) == pytest.approx(
            lr_at(job.optimizer, 400_000, int(share * 400_000)), rel=1e-3)
    assert sum(st.tokens for st in scale_job(job, 0.013).curriculum.stages) == 5200


def test_comparison_base_validates_every_arm_at_one_seq_len_and_one_precision(demo_paths_in_cwd):
    job = load_job(os.path.join(CONFIGS, "yxanul_270m_progressive_curriculum.yaml"))
    spec = compare_spec(job, "curriculum,compressed:0.75", 1, 0.01, None, 0.05, "out")
    base, notes = comparison_base(job, spec)
    assert base.curriculum.validation_seq_len == 2048 and base.curriculum.target_tokens == 10_000_000
    assert base.curriculum.validation_every_tokens == 500_000
    assert not any(st.fp8 for st in base.curriculum.stages) and "FP8 off in every arm" in notes[0]


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, problem", [
    (["--arms", "curriculum,fast"], "--arms: 'fast' is not an arm"),
    (["--arms", "compressed:1.25"], "--arms: 'compressed:1.25': the scale must be in (0, 1]"),
    (["--eval-seq-len", "4096"], "--eval-seq-len: 4096 is beyond the model's max_seq_len 2048"),
    (["--seeds", "0"], "--seeds: 0: at least 1"),
    (["--tokens-scale", "0"], "--tokens-scale: 0: must be > 0"),
])
def test_bad_flags_exit_2_naming_the_flag_before_any_work(demo_paths_in_cwd, capsys, args, problem):
    assert main(["compare", DEMO, "--out", "out", *args]) == 2
    captured = capsys.readouterr()
    assert problem in captured.err and not captured.out  # nothing listed, started or trained
    assert not os.path.exists("out")


# ---- the report ------------------------------------------------------------------------------


def _records(losses: list[float], every: int, seconds_per_point: float = 1.0) -> list[dict]:
    return [{"tokens": i * every + (7 if i else 0), "seconds": i * seconds_per_point,
             "loss": {"a": v, "b": v + 1.0}} for i, v in enumerate(losses)]


def test_matched_points_take_the_first_record_at_or_past_each_point():
    pts = matched_points(_records([5, 4, 3], 100), 100, 200)
    assert [(p["point"], p["tokens"], p["mean"]) for p in pts] == [(0, 0, 5.5), (100, 107, 4.5), (200, 207, 3.5)]
    with pytest.raises(ValueError, match="no validation record at or past 300"):
        matched_points(_records([5, 4, 3], 100), 100, 300)


def test_reach_interpolates_and_the_flat_arm_s_own_ratios_are_one():
    flat = {"points": matched_points(_records([6.0, 5.0, 4.0, 3.0], 100), 100, 300), "train_seconds": 3.0,
            "tokens": 300}
    fast = {"points": matched_points(_records([6.0, 4.0, 3.4, 2.8], 100, 2.0), 100, 300), "train_seconds": 6.0,
            "tokens": 300}
    assert reach(flat["points"], 4.0) == pytest.approx((257.0, 2.5))
    assert reach(flat["points"], 1.0) is None
    summary = summarize({"flat": [flat], "curriculum": [fast]})
    assert summary["flat"]["tokens_ratio"] == [1.0] and summary["flat"]["seconds_ratio"] == [1.0]
    # the curriculum reaches flat's final 3.5 between its points at 207 (3.9) and 307 (3.3)
    assert summary["curriculum"]["reach_tokens"][0] == pytest.approx(207 + 100 * 0.4 / 0.6)
    assert summary["curriculum"]["tokens_ratio"][0] == pytest.approx((207 + 100 * 0.4 / 0.6) / 307)


def _summary(flat_finals: list[float], arm_finals: list[float]) -> dict:
    def run(final):
        return {"points": matched_points(_records([9.0, final - 0.5], 100), 100, 100), "train_seconds": 1.0,
                "tokens": 100}
    return summarize({"flat": [run(f) for f in flat_finals], "curriculum": [run(f) for f in arm_finals]})


def test_verdict_claims_only_beyond_the_noise():
    one = verdict(_summary([5.0], [4.99]))
    assert "one seed" in one[0] and "no difference claimed (within 0.0150)" in one[1]
    assert "better than flat" in verdict(_summary([5.0], [4.95]))[1]
    # two seeds: spread 0.0071 (stdev of 5.00 and 5.01), so 0.0212 is the bar
    two = verdict(_summary([5.0, 5.01], [4.99, 5.0]))
    assert "2 seeds" in two[0] and "no difference claimed (within 0.0212)" in two[1]
    assert "worse than flat" in verdict(_summary([5.0, 5.01], [5.1, 5.12]))[1]
    assert "signs differ between seeds" in verdict(_summary([5.0, 5.0], [4.9, 5.1]))[1]


# ---- a whole comparison on a real cluster ----------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """The demo's stages 5-7 (seq_len 128, 256, 512; three mixes) at a fifth of their budgets on
    the tiny model, compared as curriculum, flat and compressed:0.5 through `ray job submit`'s
    entrypoint, validated every quarter of the target at seq_len 512."""
    tmp = tmp_path_factory.mktemp("compare")
    config = demo_subset(str(tmp / "three.yaml"), 4, 7, scale=0.2, storage_path=str(tmp / "runs"))
    with open(config) as f:
        import yaml

        data = yaml.safe_load(f)
    data["model"]["preset"] = "tiny"
    write_yaml(config, data)
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "jobs/compare_curricula.py", config, "--arms", "curriculum,compressed:0.5",
                           "--eval-every", "0.25", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    with open(out / "compare.json") as f:
        return json.load(f), log, out, load_job(config)


@pytest.mark.ray
@pytest.mark.timeout(1500)
def test_every_arm_has_every_point_and_the_flat_arm_s_ratios_are_one(comparison):
    doc, log, out, job = comparison
    assert os.path.getsize(out / "compare.png") > 10_000
    assert doc["arms"] == ["flat", "curriculum", "compressed:0.5"] and doc["eval_seq_len"] == 512
    runs = doc["runs"]
    target = job.curriculum.target_tokens  # 24,000
    for arm, points in (("flat", [0, 6000, 12000, 18000, 24000]), ("curriculum", [0, 6000, 12000, 18000, 24000]),
                        ("compressed:0.5", [0, 6000, 12000])):
        (run,) = runs[arm]
        assert [p["point"] for p in run["points"]] == points, arm
        for p in run["points"]:
            assert p["tokens"] >= p["point"] and set(p["loss"]) == {"fineweb", "math", "code"}
            assert all(math.isfinite(v) and 0 < v < 20 for v in p["loss"].values())
            assert p["seconds"] >= 0
        assert run["points"][-1]["tokens"] == (target if arm != "compressed:0.5" else target // 2)
        assert [p["seconds"] for p in run["points"]] == sorted(p["seconds"] for p in run["points"])
    summary = doc["summary"]["flat"]
    assert summary["tokens_ratio"] == [1.0] and summary["seconds_ratio"] == [1.0]
    assert doc["verdict"][0].startswith("one seed")
    # Every held-out set filled its rows at 512 (the demo's 16 documents did not): raised, and said.
    assert "validation_docs: 16 ->" in log and doc["validation_docs"]["math"] > 16
    assert "curriculum: its final mean held-out loss" in log


@pytest.mark.ray
@pytest.mark.timeout(1500)
def test_arms_differ_only_in_order_not_in_tokens_sources_or_initial_weights(comparison):
    doc, _, _, job = comparison
    runs = {arm: rs[0] for arm, rs in doc["runs"].items()}
    flat, curriculum = runs["flat"], runs["curriculum"]
    # The same trained tokens, and the same initial weights in every arm (one seed index).
    assert flat["tokens"] == curriculum["tokens"] == job.curriculum.target_tokens
    assert len({r["initial_weights"] for r in runs.values()}) == 1 and flat["initial_weights"]
    assert len({json.dumps(r["points"][0]["loss"]) for r in runs.values()}) == 1  # same loss before a step
    assert {st["seq_len"] for st in flat["stages"]} == {512}
    assert [st["seq_len"] for st in curriculum["stages"]] == [128, 256, 512]
    # The flat arm's realised mix is the curriculum's token-weighted average: within one row per
    # worker of each stage's share (the deficit round-robin's bound), and so is the curriculum's
    # in total, so the arms see the same amount of each source.
    # A stage's last step may mask the positions past its budget (fewer than a row per worker).
    mix = average_mix(job.curriculum.stages)
    world, row = job.run.workers, 512
    for st, realised in zip(flat["stages"], flat["stage_tokens_by_source"]):
        left = st["tokens"] % (st["batch"] * row)
        masked = math.ceil(math.ceil(left / row) / world) * world * row - left if left else 0
        for source, share in mix.items():
            assert abs(realised.get(source, 0) - share * st["tokens"]) <= world * row + masked, (st, realised)
    for source, share in mix.items():
        for run in (flat, curriculum):
            bound = len(run["stages"]) * 2 * world * row
            assert abs(run["tokens_by_source"][source] - share * run["tokens"]) <= bound, (source, run)
