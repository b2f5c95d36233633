"""Sources that cannot give a document are refused before Ray, from their files' metadata: real
parquet and jsonl files, the real CLI in a subprocess, timed, with no Ray cluster started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import base_config, write_yaml
from tests.pipeline_helpers import write_docs
from yxanul_ray.hub import Redacted, SourceFiles
from yxanul_ray.readers import ReadSpec
from yxanul_ray.survey import repeat_warning, source_problem, stage_shortfall, survey_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [f"Document {i}: {'word ' * 40}" for i in range(40)]


def sources(tmp_path) -> str:
    root = tmp_path / "src"
    for name in ("fineweb", "math", "code"):
        write_docs(str(root / name / "part-0.parquet"), TEXTS)
    return str(root)


def train_refused(tmp_path, data: dict) -> tuple[subprocess.CompletedProcess, float, str]:
    """`python -m yxanul_ray train` on `data`, with Ray's temp dir of its own and no cluster to
    join: (the process, its seconds, that temp dir)."""
    config = write_yaml(str(tmp_path / "job.yaml"), {**data, "run": {**data["run"], "storage_path": str(tmp_path)}})
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "yxanul_ray", "train", config], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - t0, str(ray_tmp)


@pytest.mark.parametrize("defect", ["zero_rows", "not_text", "all_null", "empty_texts"])
def test_a_source_without_usable_text_is_refused_before_ray(tmp_path, defect):
    root = sources(tmp_path)
    bad = os.path.join(root, "math", "part-0.parquet")
    if defect == "zero_rows":
        write_docs(bad, [])
    elif defect == "not_text":
        pq.write_table(pa.table({"text": pa.array(range(10), pa.int64())}), bad)
    elif defect == "all_null":
        pq.write_table(pa.table({"text": pa.array([None] * 10, pa.string())}), bad)
    else:
        write_docs(bad, ["", "   "] * 5)
    proc, seconds, ray_tmp = train_refused(tmp_path, base_config(root))
    said = {"zero_rows": "hold no rows", "not_text": "is int64, not text",
            "all_null": "every value of column 'text' is null", "empty_texts": "none of the first 10 documents"}[defect]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "sources.math: source math" in line and said in line, line
    assert defect == "all_null" or bad in line
    assert "fix: sources.math" in line and "Traceback" not in proc.stderr
    assert seconds < 60 and not os.listdir(ray_tmp), (seconds, os.listdir(ray_tmp))  # no Ray started


def test_a_jsonl_source_whose_text_is_not_a_string_is_refused(tmp_path):
    path = tmp_path / "j" / "part-0.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": {"nested": i}}) + "\n" for i in range(5)))
    spec = ReadSpec(SourceFiles("j", "local", (str(path),), "jsonl", sizes=(path.stat().st_size,)), "text",
                    1_000_000, 0, 1)
    survey = survey_source(spec, Redacted(None))
    assert source_problem(survey, "text") == (
        f"source j: none of the first 5 documents of {path} has usable text in 'text' (non_string); fix: "
        "sources.j.path (or hf) to files that hold its documents, or sources.j.text_field")


def test_a_stage_a_source_certainly_cannot_fill_is_refused_and_a_small_one_is_warned_of(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["tiny text"] * 3}), path, use_dictionary=False)
    spec = ReadSpec(SourceFiles("a", "local", (str(path),), "parquet", sizes=(path.stat().st_size,)), "text",
                    1_000_000, 0, 1)
    survey = survey_source(spec, Redacted(None))
    (f,) = survey.surveyed
    assert f.rows == 3 and f.text_type == "string" and 27 <= f.text_bytes < 100 and survey.usable_docs == 3
    per_pass = f.text_bytes + 3
    assert stage_shortfall(survey, [("s", per_pass * 65)]) is None
    said = stage_shortfall(survey, [("s", 10), ("big", per_pass * 65 + 1)])
    assert said.startswith(f"source a: stage 'big' needs {per_pass * 65 + 1:,} of its tokens, but its files hold "
                           f"at most {per_pass:,} a pass") and "lower its mix weight" in said
    assert repeat_warning(survey, 1) is None
    assert "it repeats its documents about" in repeat_warning(survey, 10 * per_pass)


def test_the_demo_sources_pass_and_a_dictionary_encoded_column_gives_no_bound(demo_corpus):
    from yxanul_ray.config import load_job
    from yxanul_ray.manifest import list_sources
    from yxanul_ray.preflight import check_sources
    from yxanul_ray.stage_data import read_spec

    job = load_job(os.path.join(REPO, "configs", "demo.yaml"), [f"sources.{s}.path={demo_corpus}/{s}/*.parquet"
                                                                for s in ("fineweb", "math", "code")])
    listing = list_sources(job)
    check_sources(job, listing)  # no refusal
    survey = survey_source(read_spec(job, listing.files["fineweb"]), Redacted(None))
    assert survey.whole and survey.usable_docs == 64 and sum(f.rows for f in survey.surveyed) > 1000
    # pyarrow dictionary-encodes text by default: its uncompressed size is no bound of the text's
    assert all(f.text_bytes is None for f in survey.surveyed)
    assert stage_shortfall(survey, [("s", 10**15)]) is None


def test_a_non_finite_setting_is_refused_before_ray_naming_the_field(tmp_path):
    data = base_config(sources(tmp_path))
    data["optimizer"]["peak_lr"] = float("nan")
    proc, seconds, ray_tmp = train_refused(tmp_path, data)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().endswith("optimizer.peak_lr: nan is not a finite number; fix: a finite value")
    assert seconds < 30 and not os.listdir(ray_tmp)
