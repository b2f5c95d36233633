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
