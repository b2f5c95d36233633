"""GPU workers, or more logical CPUs than there are, asked of a cluster started here (this machine
alone): refused with the fix, on a real Ray cluster's resources, instead of Ray Train waiting for
nodes nobody will add."""

from __future__ import annotations

import math
import os

import pytest

from tests.helpers import CONFIGS
from yxanul_ray import raycluster
from yxanul_ray.config import ConfigError, load_job
from yxanul_ray.driver import check_local_resources, cpu_shortfall

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
        check_local_resources(ray_cluster, gpu_job)
    check_local_resources(ray_cluster, load_job(DEMO))  # CPU workers: nothing to say
    # A joined cluster (CI's head here) may have an autoscaler that adds GPU nodes: it waits.
    monkeypatch.setattr(raycluster, "_started_here", False)
    check_local_resources(ray_cluster, gpu_job)


def test_train_workers_and_data_tasks_that_cannot_fit_a_cluster_started_here_are_refused(ray_cluster,
                                                                                         demo_paths_in_cwd,
                                                                                         monkeypatch):
    """Logical CPUs asked beyond a cluster started here: Ray would wait for a node no autoscaler
    will add, the run silent. Refused with the value that fits; a joined cluster waits."""
    cpus = ray_cluster.cluster_resources()["CPU"]
    fits = math.floor((cpus - 0.25) / 2 * 1000) / 1000
    monkeypatch.setattr(raycluster, "_started_here", True)
    greedy = load_job(DEMO, ["run.cpus_per_worker=100"])
    with pytest.raises(ConfigError, match=rf"demo.yaml: run.cpus_per_worker: 2 train worker\(s\) x 100 logical CPUs "
                                          rf"and a data task of 0.25 \(data.data_cpus\) ask for 200.25, but no Ray "
                                          rf"cluster was running and the one started here has {cpus:g} logical CPUs; "
                                          rf"fix: --set run.cpus_per_worker={fits:g}$"):
        check_local_resources(ray_cluster, greedy)
    check_local_resources(ray_cluster, load_job(DEMO))  # the demo's defaults fit
    monkeypatch.setattr(raycluster, "_started_here", False)
    check_local_resources(ray_cluster, greedy)
    assert cpu_shortfall(load_job(DEMO), 4) is None
    assert cpu_shortfall(load_job(DEMO, ["run.workers=64"]), 4)[1] == "--set run.workers=15"
    assert cpu_shortfall(load_job(DEMO, ["data.data_cpus=8"]), 4) == (
        "data.data_cpus: each data task asks for 8 logical CPUs", "--set data.data_cpus=0.25")


@pytest.mark.timeout(300)
def test_a_cluster_file_left_by_a_head_that_is_gone_starts_a_cluster_here(tmp_path):
    """`ray_current_cluster` outlives a head ended without `ray stop` (killed, or a `--block`
    head's process ended, as the job-submit test's is). With no head answering at the address it
    names, a run starts its own cluster. Before, ray.init took the file for a running cluster
    and every later run on the machine failed: "When connecting to an existing cluster,
    num_cpus and num_gpus must not be provided"."""
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's sockets live under its temp dir: a short one (a Unix socket's path is at most 107 bytes).
    temp = tempfile.mkdtemp(prefix="yr", dir="/tmp")
    try:
        os.makedirs(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as f:
            f.write(f"127.0.0.1:{port}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = temp
        code = ("from yxanul_ray.raycluster import init_ray, started_here\n"
                "ray = init_ray(num_cpus=2, dashboard=False)\n"
                "print('cpus', ray.cluster_resources()['CPU'], 'started here', started_here())\n"
                "ray.shutdown()\n")
        # In a PID namespace of its own: Ray joins any live cluster it sees on the machine (CI's
        # head, or this session's), and the case here is the one where none is left.
        proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code], env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cpus 2.0 started here True" in proc.stdout
    finally:
        shutil.rmtree(temp, ignore_errors=True)
