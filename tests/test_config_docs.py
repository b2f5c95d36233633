"""docs/config.md is generated from the Spec classes and kept fresh."""

from __future__ import annotations

import os
import subprocess
import sys

from yxanul_ray.config_docs import SECTIONS, render, spec_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_committed_config_reference_is_what_the_specs_generate():
    with open(os.path.join(REPO, "docs", "config.md"), encoding="utf-8") as f:
        assert f.read() == render(), "docs/config.md is stale: run `yxanul-ray config-docs`"


def test_every_field_is_documented_with_its_default():
    for _, class_name in SECTIONS:
        for name, tp, default, doc in spec_fields(class_name):
            assert doc or name == "name", f"{class_name}.{name} has no docstring"
            assert tp and default
    text = render()
    assert "| `seq_len` | `int` | `required` |" in text and "| `peak_lr` | `float` | `6e-4` |" in text


def test_config_docs_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "config.md"
    stale.write_text("# old\n")
    cmd = [sys.executable, "-m", "yxanul_ray", "config-docs", "--out", str(stale)]
    proc = subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "is stale" in proc.stderr
    assert subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).returncode == 0
    assert subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=REPO).returncode == 0
    assert stale.read_text() == render()
