"""The GPU step benchmark dry-runs on CPU: the project's step and transformers' Llama at the same
shape in one process, and a project.json that `check --gpu-json` reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from yxanul_ray.check import load_gpu_rates

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_step_benchmark_dry_run_writes_both_sides_and_their_ratio(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/benchmark_gpu_step.py", "--device", "cpu", "--shape", "tiny",
                           "--seqs", "16", "--tokens-per-step", "128", "--modes", "eager", "--steps", "1",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "project.json").read_text())
    (row,), (base,) = data["rows"], data["baseline_rows"]
    assert row["mode"] == "torch" and base["mode"] == "llama" and row["seq"] == base["seq"] == 16
    assert row["ratio"] == row["tok_s"] / base["tok_s"] and row["first_loss_rel_diff_vs_eager"] < 1e-4
    assert load_gpu_rates(str(tmp_path / "project.json")) == {16: row["tok_s"]}
    assert "transformers LlamaForCausalLM" in proc.stdout


def test_projection_is_stage_tokens_at_measured_rates_plus_compile_and_switches():
    from benchmarks.projection import project_curriculum

    rows = [{"seq": 8, "batch": 100, "tok_s": 1000.0, "warmup_s": 10.0},
            {"seq": 64, "batch": 10, "tok_s": 2000.0, "warmup_s": 1.0}, {"seq": 128, "error": "OOM"}]
    p = project_curriculum([(8, 10_000), (64, 40_000), (8, 5_000)], rows, gpus=2, switch_s=3.0)
    # 10,000 / 2,000 + 40,000 / 4,000 + 5,000 / 2,000; compile: warm-up less 3 warm steps (0.8 s, 0.32 s)
    assert p["step_s"] == 5 + 10 + 2.5 and p["switch_s"] == 6.0
    assert abs(p["compile_s"] - (2 * (10 - 3 * 0.8) + (1 - 3 * 0.32))) < 1e-9
    assert p["total_s"] == p["step_s"] + p["compile_s"] + p["switch_s"] and p["missing"] == []
    assert project_curriculum([(128, 1)], rows)["total_s"] is None  # its shape failed: no projection


def test_gpu_step_benchmark_projects_a_curriculum_with_each_lever_beside_the_baseline(tmp_path):
    import yaml

    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({
        "sources": {"a": {"path": str(tmp_path / "*.parquet")}}, "model": {"preset": "tiny"},
        "curriculum": {"target_tokens": 1280, "stages": [
            {"name": "short", "seq_len": 8, "tokens": 640, "batch_size": 8, "mix": {"a": 1.0}},
            {"name": "long", "seq_len": 16, "tokens": 640, "batch_size": 4, "mix": {"a": 1.0}}]}}))
    (tmp_path / "a.parquet").write_bytes(b"")  # the config names files; the benchmark reads none
    proc = subprocess.run([sys.executable, "benchmarks/benchmark_gpu_step.py", "--device", "cpu", "--config",
                           str(config), "--shape", "tiny", "--modes", "eager", "--steps", "1", "--levers",
                           "head_loss=logits,head_loss=liger", "--switch-s", "2", "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "project.json").read_text())
    assert list(data["projection"]) == ["torch", "torch head_loss=logits", "torch head_loss=liger", "llama"]
    for label, p in data["projection"].items():
        rows = {r["seq"]: r for r in data["rows"] + data["baseline_rows"] if r["mode"] == label}
        assert p["step_s"] == 640 / rows[8]["tok_s"] + 640 / rows[16]["tok_s"]
        assert p["total_s"] == p["step_s"] + p["compile_s"] + 2.0
    # liger needs a GPU: the CPU runs the sliced loss instead, and says so
    assert "note: model.head_loss liger runs on a CUDA GPU only" in proc.stdout
    assert "projected wall time of" in proc.stdout and "llama" in proc.stdout.split("projected wall time of")[1]
