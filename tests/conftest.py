from __future__ import annotations

import os

import pytest


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
    """Run from a directory where configs/demo.yaml's relative data/demo globs match files."""
    for name in ("fineweb", "math", "code"):
        d = tmp_path / "data" / "demo" / name
        d.mkdir(parents=True)
        (d / "part-0.parquet").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return str(tmp_path)


def pytest_report_header(config):
    return f"cwd: {os.getcwd()}"


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the session (4 logical CPUs on the 2 real cores, so train
    workers and Ray Data tasks never starve each other)."""
    from yxanul_ray.raycluster import local_ray_env, quiet_ray_data

    local_ray_env()
    import ray

    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}})
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
def ray_ledger(ray_cluster):
    from yxanul_ray.ledger import StageLedger

    return StageLedger.remote()
