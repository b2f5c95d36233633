"""`check` (jobs/check_streaming.py) on the offline demo config and on broken sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fake_hub import hub_offline_mode
from tests.helpers import CONFIGS, base_config, demo_subset, write_yaml
from tests.pipeline_helpers import write_docs
from yxanul_ray.check import stages_to_test
from yxanul_ray.cli import main

DEMO = os.path.join(CONFIGS, "demo.yaml")


def demo_args(corpus: str, config: str = DEMO) -> list[str]:
    args = [config]
    for s in ("fineweb", "math", "code"):
        args += ["--set", f"sources.{s}.path={corpus}/{s}/*.parquet"]
    return args + ["--set", "data.demo_corpus=null"]


@pytest.mark.ray
def test_transitions_all_stages_with_samples_estimate_and_json(ray_cluster, demo_corpus, capsys):
    code = main(["check", *demo_args(demo_corpus), "--test-transitions", "--sample", "1", "--estimate", "--json",
                 "--steps", "1"])
    printed = capsys.readouterr().out
    out = json.loads([line for line in printed.splitlines() if line.startswith("{")][-1])
    assert code == 0, [c for c in out["checks"] if not c["ok"]]
    names = [c["name"] for c in out["checks"]]
    assert [s["stage"] for s in out["stages"]] == list(range(1, 11))
    for k in range(1, 10):
        assert f"transition {k}->{k + 1} fineweb" in names and f"transition {k}->{k + 1} shape" in names
    assert all(f"stage {k} mix" in names for k in range(1, 11))
    est = out["estimate"]
    assert len(est["stages"]) == 10 and est["total_seconds"] > 0
    assert {r["bound"] for r in est["stages"]} <= {"gpu", "data"}
    assert all(len(s["sample_rows"]) == 1 and s["samples"] for s in out["stages"])


@pytest.mark.ray
def test_default_is_first_and_last_stage_and_stage_flag(ray_cluster, demo_corpus, capsys):
    assert main(["check", *demo_args(demo_corpus), "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "Stage 1 (Basic Patterns" in out and "Stage 10 (Final Polish" in out and "Stage 5 (" not in out
    assert "PASS  connectivity fineweb" in out and " 0 failed" in out
    assert main(["check", *demo_args(demo_corpus), "--stage", "5", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "Stage 5 (Reasoning Development" in out and "Stage 1 (" not in out
    assert main(["check", *demo_args(demo_corpus), "--stage", "11"]) == 2


@pytest.mark.ray
def test_test_all(ray_cluster, demo_corpus, tmp_path, capsys):
    # Every stage, on the demo's first three (the ten-stage walk is the transitions test's).
    assert stages_to_test(10, test_all=True, stage=None) == list(range(10))
    config = demo_subset(str(tmp_path / "three.yaml"), 0, 3)
    assert main(["check", *demo_args(demo_corpus, config), "--test-all", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert all(f"PASS  stage {k} mix" in out for k in range(1, 4)) and "stage 4" not in out


def _broken(tmp_path, placeholder_sources, **math_source) -> str:
    data = base_config(placeholder_sources)
    for name in ("fineweb", "code"):
        write_docs(os.path.join(placeholder_sources, name, "part-0.parquet"),
                   [f"{name} document {i}" for i in range(9)])
    data["sources"]["math"] = {**data["sources"]["math"], **math_source}
    return write_yaml(str(tmp_path / "broken.yaml"), data)


def test_missing_file_is_bad_input(tmp_path, placeholder_sources, capsys):
    path = _broken(tmp_path, placeholder_sources, path=str(tmp_path / "gone" / "*.parquet"))
    assert main(["check", path]) == 2
    assert "sources.math.path" in capsys.readouterr().err


@pytest.mark.ray
def test_wrong_text_field_fails_naming_source_and_field(tmp_path, placeholder_sources, capsys):
    write_docs(os.path.join(placeholder_sources, "math", "part-0.parquet"), ["1 + 1 = 2"])
    path = _broken(tmp_path, placeholder_sources, text_field="content")
    assert main(["check", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL  connectivity math" in out and "'content'" in out and "PASS  connectivity fineweb" in out


@pytest.mark.ray
def test_empty_file_fails_naming_source(tmp_path, placeholder_sources, capsys):
    write_docs(os.path.join(placeholder_sources, "math", "part-0.parquet"), [])
    path = _broken(tmp_path, placeholder_sources)
    assert main(["check", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL  connectivity math: source math: no readable document" in out


@pytest.mark.ray
def test_unreachable_hub_source_fails_naming_source(tmp_path, placeholder_sources, capsys, monkeypatch):
    hub_offline_mode(monkeypatch)
    data = base_config(placeholder_sources)
    for name in ("fineweb", "code", "math"):
        write_docs(os.path.join(placeholder_sources, name, "part-0.parquet"), [f"{name} doc"])
    data["sources"]["math"] = {"hf": "Yxanul/cc-math-finest"}
    path = write_yaml(str(tmp_path / "hub.yaml"), data)
    assert main(["check", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL  connectivity math: source math (hf://datasets/Yxanul/cc-math-finest)" in out


def test_check_streaming_script_reports_bad_input_as_the_cli_does(tmp_path):
    # jobs/check_streaming.py exits through cli.reporting_errors like `yxanul-ray check`: one
    # line naming the file, exit 2, no traceback, before any cluster work.
    missing = str(tmp_path / "nowhere.yaml")
    proc = subprocess.run([sys.executable, "jobs/check_streaming.py", "--config", missing],
                          cwd=os.path.dirname(CONFIGS), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {missing}: no such config file"


@pytest.mark.ray
def test_check_script_reaches_ray_when_the_environment_names_no_auth_mode(demo_corpus):
    # A user's shell has no RAY_AUTH_MODE (CI exports one, which hid this). `check` imported Ray
    # (its packer actor) before init_ray set the mode, and Ray's core reads it once, at import:
    # the process then sent no token, and the cluster it started or joined refused it
    # (AuthenticationError, exit 1). Run as the README runs it, in a fresh process.
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([sys.executable, "jobs/check_streaming.py", "--config", DEMO,
                           *demo_args(demo_corpus)[1:], "--stage", "1", "--steps", "1"],
                          cwd=os.path.dirname(CONFIGS), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "PASS  stage 1 mix" in proc.stdout and " 0 failed" in proc.stdout
