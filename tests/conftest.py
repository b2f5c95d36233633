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
