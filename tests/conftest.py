from __future__ import annotations

import os
import subprocess
import time

import pytest

from yxanul_ray.raycluster import local_ray_env, worker_soft_limit

# Before anything imports Ray: loopback-only ports, token auth for clients, no usage stats.
local_ray_env()


@pytest.fixture
def placeholder_sources(tmp_path):
    """Directories with one (empty) parquet-named file per source, for config-only tests."""
    root = tmp_path / "src"
    for name in ("fineweb", "math", "code"):
        (root / name).mkdir(parents=True)
        (root / name / "part-0.parquet").write_bytes(b"")
    return str(root)


@pytest.fixture
def demo_paths_in_cwd(tmp_path, monkeypatch):
    """Run from a directory where the shipped configs' relative globs (configs/demo.yaml's
    data/demo, configs/compare_cpu.yaml's data/corpus) match files."""
    for corpus in ("demo", "corpus"):
        for name in ("fineweb", "math", "code"):
            d = tmp_path / "data" / corpus / name
            d.mkdir(parents=True)
            (d / "part-0.parquet").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return str(tmp_path)


def pytest_report_header(config):
    return f"cwd: {os.getcwd()}"


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the session: the running head if there is one, else one
    started here with 4 logical CPUs on the 2 real cores (train workers and Ray Data tasks hold
    fractions of a CPU and must not starve each other)."""
    from yxanul_ray.raycluster import local_ray_env, quiet_ray_data, running_cluster_address

    local_ray_env()
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}}
    address = running_cluster_address()
    if address:  # CI's head (started by .ci/run): join it rather than start a second cluster
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, _node_ip_address="127.0.0.1")
    else:
        ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, runtime_env=runtime_env)
    quiet_ray_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    from yxanul_ray.demo_corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    build_demo_corpus(str(root))
    return str(root)


@pytest.fixture(scope="session")
def ray_packers(ray_cluster):
    from yxanul_ray.stage_packers import StagePackers

    return StagePackers.remote()


@pytest.fixture(scope="session")
def job_address(tmp_path_factory):
    """The Ray head's job API: CI's (YXANUL_RAY_JOB_ADDRESS), else a head started here."""
    address = os.environ.get("YXANUL_RAY_JOB_ADDRESS")
    if address:
        yield address
        return
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_num_workers_soft_limit": str(worker_soft_limit())}
    address = "http://127.0.0.1:8275"
    # In the foreground of its own process (--block): ending that process ends this cluster and no
    # other (`ray stop` would end every Ray cluster on the machine); at once, without draining
    # (which waited its whole 30 s for idle workers).
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(["ray", "start", "--head", "--num-cpus=4", "--port=6390", "--dashboard-host=127.0.0.1",
                                 "--dashboard-port=8275", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 "--block"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True).returncode:
            assert head.poll() is None and time.monotonic() < deadline, f"the Ray head did not start: {log.read_text()}"
            time.sleep(1)
        yield address
    finally:
        head.terminate()  # SIGTERM: the node drains and ends the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
