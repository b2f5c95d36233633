"""Held-out sets sized in tokens: a source whose validation documents cannot fill the rows that
validation asks for holds out more of its last file, before Ray starts, and one whose last file
cannot is refused with the numbers; a resume keeps its run's held-out set."""

from __future__ import annotations

import dataclasses
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import CONFIGS
from yxanul_ray.config import load_job
from yxanul_ray.holdout import sized_holdouts, tokens_needed
from yxanul_ray.hub import resolve_files
from yxanul_ray.local_data import holdout_rows
from yxanul_ray.resume_check import with_saved_holdouts
from yxanul_ray.specs import ConfigError
from yxanul_ray.tokenizer import load_tokenizer

TOK = load_tokenizer("gpt2")


def _demo_job(corpus: str, *overrides: str):
    sets = [f"sources.{s}.path={corpus}/{s}/*.parquet" for s in ("fineweb", "math", "code")]
    return load_job(os.path.join(CONFIGS, "demo.yaml"), [*sets, *overrides])


def _files(job):
    return {s: resolve_files(spec, None) for s, spec in job.sources.items()}


def test_a_held_out_set_too_small_for_its_seq_len_is_enlarged_to_fill_the_rows(demo_corpus):
    # At seq_len 1024 the demo's 16 held-out math documents fill no row: validation left math
    # out without a word.
    job = _demo_job(demo_corpus, "curriculum.validation_seq_len=1024")
    files = _files(job)
    assert "math" not in holdout_rows(job, files, TOK.eos_id, 1024, 8)
    sized, notes = sized_holdouts(job, files, TOK)
    assert sized.sources["code"].validation_docs == 16  # its 16 files of source fill 8 rows already
    assert sized.sources["fineweb"].validation_docs > 16 and sized.sources["math"].validation_docs > 16
    assert [n.split(":")[0] for n in notes] == ["sources.fineweb.validation_docs", "sources.math.validation_docs"]
    assert "fill curriculum.validation_rows=8 rows of validation_seq_len=1024 tokens" in notes[1]
    rows = holdout_rows(sized, files, TOK.eos_id, 1024, 8)
    assert {s: r.shape for s, r in rows.items()} == {s: (8, 1025) for s in ("fineweb", "math", "code")}
    # A set that fills its rows already is left as it is.
    assert sized_holdouts(sized, files, TOK) == (sized, [])
    assert sized_holdouts(_demo_job(demo_corpus, "curriculum.validation_rows=0"), files, TOK)[1] == []


def test_a_last_file_that_cannot_fill_the_rows_is_refused_with_the_numbers(tmp_path, demo_corpus):
    few = tmp_path / "few"
    few.mkdir()
    pq.write_table(pa.table({"text": ["a short document about pears."] * 3}), few / "part-0.parquet")
    job = _demo_job(demo_corpus, f"sources.math.path={few}/*.parquet", "curriculum.validation_seq_len=64")
    have = 3 * (len(TOK.encode_batch(["a short document about pears."])[0]) + 1)  # an EOS after each
    refused = (r"sources.math: its held-out documents cannot fill curriculum.validation_rows=8 rows of "
               r"validation_seq_len=64 tokens \(513 tokens\): its last file, "
               rf"{few}/part-0.parquet, holds 3 usable documents of {have} tokens in all; "
               rf"fix: curriculum.validation_seq_len={have - 1} or shorter, a larger last file, or "
               r"sources.math.validation_docs: 0")
    with pytest.raises(ConfigError, match=refused):
        sized_holdouts(job, _files(job), TOK)
    assert tokens_needed(8, 64) == 513
    job = _demo_job(demo_corpus, f"sources.math.path={few}/*.parquet", "sources.math.validation_docs=0")
    assert sized_holdouts(job, _files(job), TOK)[0].sources["math"].validation_docs == 0  # left out, as asked


def test_a_resume_keeps_the_held_out_set_its_run_sized(demo_paths_in_cwd):
    config = load_job(os.path.join(CONFIGS, "demo.yaml"))
    saved = dataclasses.replace(config, sources={**config.sources, "math": dataclasses.replace(
        config.sources["math"], validation_docs=22)})
    resumed = with_saved_holdouts(saved, config)
    assert resumed.sources["math"].validation_docs == 22 and resumed.sources["fineweb"].validation_docs == 16
    # asking for more than the run held out is the config's change, which the resume check refuses
    more = load_job(os.path.join(CONFIGS, "demo.yaml"), ["sources.math.validation_docs=40"])
    assert with_saved_holdouts(saved, more).sources["math"].validation_docs == 40
