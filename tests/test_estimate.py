"""`check --estimate`'s arithmetic and its GPU figures file (pure: no Ray, no pipeline)."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import base_config, write_yaml
from yxanul_ray.check import estimate, load_gpu_rates
from yxanul_ray.cli import main
from yxanul_ray.config import load_job


def _figures(tmp_path, rows) -> str:
    """A file shaped like benchmarks/benchmark_gpu_step.py's project.json."""
    path = tmp_path / "project.json"
    path.write_text(json.dumps({"device": "NVIDIA H100", "rows": rows}))
    return str(path)


def _job(tmp_path, placeholder_sources, **stage0):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][0].update(stage0)
    return load_job(write_yaml(str(tmp_path / "job.yaml"), data))


def test_gpu_figures_take_the_best_mode_per_seq_len_and_skip_failed_shapes(tmp_path):
    path = _figures(tmp_path, [
        {"mode": "torch", "seq": 8, "batch": 16384, "tok_s": 1000.0},
        {"mode": "torch-compiled", "seq": 8, "batch": 16384, "tok_s": 3000.0},
        {"mode": "torch", "seq": 2048, "batch": 64, "error": "OutOfMemoryError()"},
        {"mode": "torch", "seq": 32, "batch": 4096, "tok_s": 500.0},
    ])
    assert load_gpu_rates(path) == {8: 3000.0, 32: 500.0}


def test_estimate_uses_config_then_figures_times_workers_then_defaults(tmp_path, placeholder_sources):
    # Stage a: rate from the config; b: benchmark figure per GPU x 2 workers; c: the 4090 default.
    job = _job(tmp_path, placeholder_sources, estimate_tokens_per_s=1024.0)
    rows, total = estimate(job, pipeline_rates={}, gpu_by_seq={8: 99.0, 16: 512.0})
    assert [r["gpu_tokens_per_s"] for r in rows] == [1024.0, 1024.0, 150_000.0]
    assert [r["seconds"] for r in rows] == [2.0, 4.0, 8192 / 150_000]
    assert total == pytest.approx(6.0 + 8192 / 150_000)
    assert {r["bound"] for r in rows} == {"gpu"}


def test_estimate_names_the_slower_side(tmp_path, placeholder_sources):
    job = _job(tmp_path, placeholder_sources)
    rows, _ = estimate(job, pipeline_rates={0: 1000.0, 2: 1e9}, gpu_by_seq={8: 4096.0})
    assert [r["bound"] for r in rows] == ["data", "gpu", "gpu"]
    assert rows[1]["data_tokens_per_s"] == pytest.approx((1000.0 + 1e9) / 2)  # unmeasured: the median
    assert rows[0]["seconds"] == 2048 / 1000.0 and rows[0]["gpu_tokens_per_s"] == 8192.0


@pytest.mark.parametrize("content, field", [
    (None, "cannot read it"),
    ("{not json", "not JSON (line 1"),
    (json.dumps({"device": "x"}), "field 'rows'"),
    (json.dumps({"rows": [{"tok_s": 5.0}]}), "rows[0] has no 'seq'"),
    (json.dumps({"rows": [{"seq": 8, "tok_s": "fast"}]}), "rows[0].seq / .tok_s must be numbers"),
    (json.dumps({"rows": [{"seq": 8, "tok_s": 0}]}), "rows[0].tok_s must be > 0"),
    (json.dumps({"rows": [{"seq": 8, "error": "OOM"}]}), "no row has a 'tok_s'"),
])
def test_bad_gpu_figures_fail_before_any_cluster_work(tmp_path, placeholder_sources, capsys, content, field):
    path = tmp_path / "figures.json"
    if content is not None:
        path.write_text(content)
    config = write_yaml(str(tmp_path / "job.yaml"), base_config(placeholder_sources))
    assert main(["check", config, "--gpu-json", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--gpu-json {path}" in err and field in err


def test_the_committed_h200_figures_cover_every_stage_of_the_270m_curriculum():
    # measurements/ holds what jobs/gpu_step_vs_reference.sh wrote on the device; the README points
    # `check --estimate --gpu-json` at it, so it must stay readable and cover the curriculum.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rates = load_gpu_rates(os.path.join(root, "measurements/h200-2026-11-27/project.json"))
    job = load_job(os.path.join(root, "configs/yxanul_270m_progressive_curriculum.yaml"))
    assert set(rates) == {stage.seq_len for stage in job.curriculum.stages}
    assert all(150_000 < tok_s < 400_000 for tok_s in rates.values())
