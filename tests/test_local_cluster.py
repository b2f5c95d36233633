"""GPU workers asked of a cluster started here (this machine alone): refused with the fix, on a
real Ray cluster's resources, instead of Ray Train waiting for GPU nodes nobody will add."""

from __future__ import annotations

import os

import pytest

from tests.helpers import CONFIGS
from yxanul_ray import raycluster
from yxanul_ray.config import ConfigError, load_job
from yxanul_ray.driver import check_local_gpus

pytestmark = pytest.mark.ray
DEMO = os.path.join(CONFIGS, "demo.yaml")


def test_gpu_workers_on_a_cluster_without_gpus_started_here_are_refused(ray_cluster, demo_paths_in_cwd, monkeypatch):
    assert ray_cluster.cluster_resources().get("GPU", 0) == 0  # this machine: CPUs only
    gpu_job = load_job(DEMO, ["run.use_gpu=true"])
    # Started by this process (init_ray records it): nothing will add GPU nodes, so refused.
    monkeypatch.setattr(raycluster, "_started_here", True)
    with pytest.raises(ConfigError, match=r"demo.yaml: run.use_gpu: 2 GPU worker\(s\), but no Ray cluster was running "
                                          r"and the one started here, this machine alone, has 0 GPU\(s\); fix: --set "
                                          r"run.use_gpu=false"):
        check_local_gpus(ray_cluster, gpu_job)
    check_local_gpus(ray_cluster, load_job(DEMO))  # CPU workers: nothing to say
    # A joined cluster (CI's head here) may have an autoscaler that adds GPU nodes: it waits.
    monkeypatch.setattr(raycluster, "_started_here", False)
    check_local_gpus(ray_cluster, gpu_job)
