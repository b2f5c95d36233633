"""GPU workers, or more logical CPUs than there are, asked of a cluster started here (this machine
alone): refused with the fix, on a real Ray cluster's resources, instead of Ray Train waiting for
nodes nobody will add."""

from __future__ import annotations

import contextlib
import math
import os

import pytest

from tests.helpers import CONFIGS
from yxanul_ray import raycluster
from yxanul_ray.config import load_job
from yxanul_ray.launch import check_local_resources
from yxanul_ray.preflight import cpu_shortfall
from yxanul_ray.specs import ConfigError

DEMO = os.path.join(CONFIGS, "demo.yaml")
# Ray joins any live cluster it sees on the machine (CI's head, or this session's): a cluster of
# the test's own starts in a PID namespace of its own.
ALONE = ["unshare", "--pid", "--fork", "--mount-proc"]


@contextlib.contextmanager
def ray_temp_dir_left_by_a_gone_head():
    """(RAY_TMPDIR, address): a Ray temp dir whose `ray_current_cluster` names a loopback port
    nothing listens on, as a head ended without `ray stop` leaves it; removed afterwards. A short
    path: Ray's Unix sockets live under it, and a socket's path is at most 107 bytes."""
    import shutil
    import socket
    import tempfile

    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{s.getsockname()[1]}"
    temp = tempfile.mkdtemp(prefix="yr", dir="/tmp")
    try:
        os.makedirs(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as f:
            f.write(gone)
        yield temp, gone
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def env_for(ray_temp_dir: str, **extra: str) -> dict:
    """This process's environment for a Ray of its own under `ray_temp_dir` (no RAY_ADDRESS)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_temp_dir, **extra}


@pytest.mark.ray
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


@pytest.mark.ray
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


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_cluster_file_left_by_a_head_that_is_gone_starts_a_cluster_here():
    """`ray_current_cluster` outlives a head ended without `ray stop` (killed, or a `--block`
    head's process ended, as the job-submit test's is). With no head answering at the address it
    names, a run starts its own cluster. Before, ray.init took the file for a running cluster
    and every later run on the machine failed: "When connecting to an existing cluster,
    num_cpus and num_gpus must not be provided"."""
    import subprocess
    import sys

    with ray_temp_dir_left_by_a_gone_head() as (temp, _):
        code = ("from yxanul_ray.raycluster import init_ray, started_here\n"
                "ray = init_ray(num_cpus=2, dashboard=False)\n"
                "print('cpus', ray.cluster_resources()['CPU'], 'started here', started_here())\n"
                "ray.shutdown()\n")
        proc = subprocess.run([*ALONE, sys.executable, "-c", code], env=env_for(temp), capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cpus 2.0 started here True" in proc.stdout


CANCEL_PROBE = r'''
import json, os, signal, time

from yxanul_ray.raycluster import init_ray

assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # as `cmd &` in a script starts it
ray = init_ray(num_cpus=2, dashboard=False)
marks = os.environ["PROBE_MARKS"]


def busy(name, seconds):
    open(os.path.join(marks, name), "w").close()
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.01)


def slow_to_load():  # Ray holds a SIGINT back while arguments load, and raises it after
    busy("loading", 2)
    return 0


class SlowToLoad:
    def __reduce__(self):
        return slow_to_load, ()


@ray.remote(max_retries=0)
def task(name, argument):
    busy(name, 20)
    return repr(signal.getsignal(signal.SIGINT))


@ray.remote
def worker_sigint():
    return repr(signal.getsignal(signal.SIGINT))


@ray.remote
def cluster_asked_without_an_address():  # what Ray's State API resolves address=None to
    from ray._private.services import canonicalize_bootstrap_address_or_die

    return canonicalize_bootstrap_address_or_die(None)


def cancel_once_started(ref, name):
    while not os.path.exists(os.path.join(marks, name)):
        time.sleep(0.05)
    ray.cancel(ref)
    try:
        ray.get(ref)
        return "ran to its end"
    except ray.exceptions.TaskCancelledError:
        return "cancelled"
    except ray.exceptions.RayTaskError as e:
        return f"{type(e.cause).__name__}: {e.cause}"


print(json.dumps({"worker_sigint": ray.get(worker_sigint.remote()),
                  "running": cancel_once_started(task.remote("running", 0), "running"),
                  "loading_arguments": cancel_once_started(task.remote("-", SlowToLoad()), "loading"),
                  "this_cluster": ray.get_runtime_context().gcs_address,
                  "without_an_address": ray.get(cluster_asked_without_an_address.remote())}))
ray.shutdown()
'''


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_run_s_workers_shed_what_they_inherit_from_how_the_cluster_was_started(tmp_path):
    """The job's worker setup hook (init_ray), on a cluster started by a process with SIGINT
    ignored, beside a cluster file left by a head that is gone.

    `cmd &` in a script starts a process with SIGINT ignored (CI's `ray start --head --block &`, a
    run launched in the background), and the raylet and every worker inherit that. Ray cancels a
    running task with SIGINT: there the task ran on to its end, and one cancelled while its
    arguments loaded failed with "TypeError: 'Handlers' object is not callable", which Ray Data's
    read tasks printed as unhandled errors when a stage's pipeline stopped them.

    Ray's State API, asked with no address (Ray Train's placement-group cleaner asks it every
    second), took the cluster the stale file names: the cleaner's thread died with a traceback in
    the run's output, or held the run's end up by 12 s."""
    import json
    import subprocess
    import sys

    marks = tmp_path / "marks"
    marks.mkdir()
    started_in_background = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"]
    with ray_temp_dir_left_by_a_gone_head() as (temp, gone):
        proc = subprocess.run([*started_in_background, *ALONE, sys.executable, "-c", CANCEL_PROBE],
                              env=env_for(temp, PROBE_MARKS=str(marks)), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["without_an_address"] == probe["this_cluster"] != gone
    assert {k: probe[k] for k in ("worker_sigint", "running", "loading_arguments")} == {
        "worker_sigint": "<built-in function default_int_handler>",
        "running": "cancelled",
        "loading_arguments": "cancelled",
    }


def test_the_worker_setup_hook_yields_to_one_the_job_was_submitted_with(monkeypatch):
    """`ray job submit --runtime-env` with a worker_process_setup_hook of the user's: Ray refuses
    to merge a second one into the job ("Failed to merge the Job's runtime env"), so the run
    keeps the user's."""
    import json

    from ray._common.utils import load_class

    ours = {"worker_process_setup_hook": "yxanul_ray.raycluster.set_up_worker_process"}
    assert load_class(ours["worker_process_setup_hook"]) is raycluster.set_up_worker_process
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)  # a driver started by hand
    assert raycluster.job_runtime_env() == ours
    submitted = {"runtime_env": {"working_dir": ".", "env_vars": {"A": "1"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(submitted))
    assert raycluster.job_runtime_env() == ours
    submitted["runtime_env"]["worker_process_setup_hook"] = "mine.set_up"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(submitted))
    assert raycluster.job_runtime_env() == {}
