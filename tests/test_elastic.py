"""Elastic training on preemptible nodes: `run.workers: [1, 2]` on a cluster of several nodes on
this machine (ray.cluster_utils.Cluster, benchmarks/benchmark_resize.py). A worker node is removed
mid-stage and later added back; the run finishes with the exact stage budgets, and every step every rank
trained, before and after each resize, is its slice of the step an undisturbed run trains (the
in-process reference, which the Ray path equals at one and two workers); the final losses are that
run's too."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, demo_subset
from tests.test_orchestration import load_demo
from yxanul_ray.config import load_job
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import resolve_files
from yxanul_ray.local_data import local_global_batches
from yxanul_ray.mixing import PAD_SOURCE
from yxanul_ray.reference_loop import run_reference
from yxanul_ray.tokenizer import load_tokenizer


def undisturbed_steps(job) -> dict[tuple[int, int], list[str]]:
    """(stage, step in stage) -> the digests of the step's rows, made in this process."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        files = {s: resolve_files(spec) for s, spec in job.sources.items()}
        eos_id = load_tokenizer(job.data.tokenizer).eos_id
        cursors, steps = {}, {}
        for k in range(len(job.curriculum.stages)):
            batches, sources = local_global_batches(job, k, cursors, files, eos_id, 1)
            for i, batch in enumerate(batches):
                steps[(k, i)] = [hashlib.sha1(row.tobytes()).hexdigest()[:12] for row in batch["tokens"]]
            cursors.update({s: SourceCursor.from_dict(src.end_report()["cursor"]) for s, src in sources.items()})
    finally:
        os.chdir(cwd)
    return steps


@pytest.mark.slow  # not in CI yet: on 2 cores Ray's autoscaling coordinator sometimes lands on the removed node
@pytest.mark.timeout(1500)
def test_a_preempted_node_and_its_return_leave_the_steps_and_budgets_exact(tmp_path):
    load_demo()
    config = demo_subset(str(tmp_path / "elastic.yaml"), 3, 6, scale=0.5, workers=[1, 2], cpus_per_worker=1.5,
                         checkpoint_every_tokens=2000, resize_check_s=2, max_failures=6, log_every_steps=1)
    digests = tmp_path / "digests"
    proc = subprocess.run([sys.executable, "benchmarks/benchmark_resize.py", config, str(tmp_path / "runs"),
                           str(digests)], cwd=REPO, capture_output=True, text=True, timeout=1400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"outcome"')][-1])
    assert report["outcome"]["error"] is None and report["outcome"]["returned"] is None, report
    assert [e["event"] for e in report["events"]] == ["removed", "shrunk", "added", "grown"]
    assert "resized: 2 -> 1 workers" in out and "resized: 1 -> 2 workers" in out
    assert [(r["from"], r["to"]) for r in report["resizes"]] == [(2, 1), (1, 2)]

    job = load_job(config)
    expected = undisturbed_steps(job)
    seen: set[tuple[int, int]] = set()
    worlds = []
    for path in sorted(glob.glob(str(digests / "*.jsonl"))):
        for line in open(path, encoding="utf-8"):
            d = json.loads(line)
            step = expected[(d["stage"], d["step"])]
            per_rank = len(d["rows"])
            real = [row for row, source in zip(d["rows"], d["sources"]) if source != PAD_SOURCE]
            assert real == step[d["rank"] * per_rank:d["rank"] * per_rank + len(real)], (d["stage"], d["step"], d)
            seen.add((d["stage"], d["step"]))
            worlds.append(d["world"])
    assert seen == set(expected)  # every step trained, none invented
    assert {1, 2} <= set(worlds)

    final = json.load(open(os.path.join(report["outcome"]["checkpoint"], "state.json")))
    assert final["tokens"] == job.curriculum.target_tokens
    assert [sum(m.values()) for m in final["stage_tokens_by_source"]] == [st.tokens for st in job.curriculum.stages]
    _, reference = run_reference(job, threads=2)
    for source, loss in reference[-1].validation.items():
        assert abs(final["validation"][-1]["loss"][source] - loss) <= 6e-5, (source, final["validation"][-1])
    assert np.isfinite(list(final["validation"][-1]["loss"].values())).all()
