"""Elastic training on preemptible nodes: `run.workers: [1, 2]` on a cluster of several nodes on
this machine (ray.cluster_utils.Cluster, benchmarks/benchmark_resize.py). A worker node is removed
mid-stage and later added back; the run finishes with the exact stage budgets, and every step every rank
trained, before and after each resize, is its slice of the step an undisturbed run trains (the
in-process reference, which the Ray path equals at one and two workers); the final losses are that
run's too."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, demo_subset, undisturbed_run
from tests.test_orchestration import load_demo
from yxanul_ray.config import load_job
from yxanul_ray.mixing import PAD_SOURCE
from yxanul_ray.reference_loop import run_reference

ON_THE_HEAD = """
from yxanul_ray.raycluster import head_node_strategy, local_ray_env
local_ray_env()
import ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                         "node_ip_address": "127.0.0.1"})
try:
    for _ in range(2):
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Control:  # as the coordinator and its packing actor ask: no CPU
        def node(self):
            return ray.get_runtime_context().get_node_id()

    actors = [Control.options(scheduling_strategy=head_node_strategy(ray)).remote() for _ in range(6)]
    print("on the head:", [ray.get(a.node.remote()) == cluster.head_node.node_id for a in actors])
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_run_s_control_actors_go_to_the_head_node_not_a_preemptible_one():
    """The coordinator and its packing actor ask for no CPU; Ray placed such actors with a soft
    head affinity on any node (and the Ray Data machinery they start, Ray's autoscaling
    coordinator among it, followed them there: when that node was the preempted one, Ray Train
    stopped resizing). A three-node cluster of its own, in a subprocess."""
    proc = subprocess.run([sys.executable, "-c", ON_THE_HEAD], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on the head: [True, True, True, True, True, True]" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.ray
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
    expected, _ = undisturbed_run(job)
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
