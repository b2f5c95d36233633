"""A tokenizer other than GPT-2 (a tokenizer.json): checked before any cluster work, and run
through the real Ray Data pipeline."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import CONFIGS, REPO, base_config, train_tokenizer_json
from tests.helpers import TOKENIZER_TEXTS as TEXTS
from tests.pipeline_helpers import run_stage, write_docs
from yxanul_ray.config import job_from_dict
from yxanul_ray.preflight import absolute_paths, check_tokenizer
from yxanul_ray.specs import ConfigError
from yxanul_ray.tokenizer import load_tokenizer, run_tokenizer, tokenizer_identity


def job_with(tmp_path, placeholder_sources: str, **data) -> object:
    raw = base_config(placeholder_sources)
    raw["data"].update(data)
    return job_from_dict(raw, str(tmp_path / "job.yaml"))


def test_a_model_with_fewer_embedding_rows_than_the_tokenizer_has_ids_is_refused(tmp_path, placeholder_sources):
    raw = base_config(placeholder_sources)
    raw["model"]["overrides"] = {"vocab_size": 1024}
    with pytest.raises(ConfigError) as e:
        check_tokenizer(job_from_dict(raw, str(tmp_path / "job.yaml")))
    message = str(e.value)
    assert "job.yaml: model:" in message and "1,024 embedding rows" in message and "50,257 ids" in message
    assert "model.overrides.vocab_size to 50,304" in message  # GPT-2's 50,257, padded to a multiple of 64


def test_a_missing_or_broken_tokenizer_json_is_refused_with_the_field(tmp_path, placeholder_sources):
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'nowhere/tokenizer.json': no such file"):
        check_tokenizer(job_with(tmp_path, placeholder_sources, tokenizer="nowhere/tokenizer.json"))
    # A directory that is not there, named as a path: "no such file", not a question to the Hub.
    for missing in (str(tmp_path / "moved"), "./moved", "~/moved-nowhere", "@v1.0"):
        with pytest.raises(ConfigError, match=rf"data.tokenizer: '{missing}': no such file"):
            check_tokenizer(job_with(tmp_path, placeholder_sources, tokenizer=missing))
    no_eos = train_tokenizer_json(str(tmp_path / "no_eos.json"), special_tokens=("<pad>",))
    with pytest.raises(ConfigError, match=r"data.tokenizer: .*no_eos.json' does not load \(ValueError: .*end-of-text"):
        check_tokenizer(job_with(tmp_path, placeholder_sources, tokenizer=no_eos))


def test_a_relative_tokenizer_path_reaches_the_workers_absolute(tmp_path, placeholder_sources, monkeypatch):
    train_tokenizer_json(str(tmp_path / "tok.json"))
    monkeypatch.chdir(tmp_path)
    job = absolute_paths(job_with(tmp_path, placeholder_sources, tokenizer="tok.json"))
    assert job.data.tokenizer == str(tmp_path / "tok.json")
    check_tokenizer(job)  # fits the tiny model's GPT-2-sized embedding
    assert absolute_paths(job_with(tmp_path, placeholder_sources)).data.tokenizer == "gpt2"  # a name stays a name


def test_a_directory_holding_a_tokenizer_json_is_read_as_that_file(tmp_path, placeholder_sources, monkeypatch):
    """The directory a fast tokenizer's save_pretrained writes, as `from_pretrained` takes it."""
    (tmp_path / "saved").mkdir()
    path = train_tokenizer_json(str(tmp_path / "saved" / "tokenizer.json"))
    (tmp_path / "saved" / "tokenizer_config.json").write_text("{}")  # save_pretrained writes it beside
    monkeypatch.chdir(tmp_path)
    check_tokenizer(job_with(tmp_path, placeholder_sources, tokenizer="saved"))
    assert load_tokenizer("saved").encode_batch(TEXTS) == load_tokenizer(path).encode_batch(TEXTS)
    assert run_tokenizer("saved") == run_tokenizer(path)  # the same content and identity
    # job.json names the file the run read, absolute for the workers.
    assert absolute_paths(job_with(tmp_path, placeholder_sources, tokenizer="saved")).data.tokenizer == path
    # A directory without one (a slow tokenizer's vocab.json + merges.txt) is refused with what it lacks.
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "vocab.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'slow': a directory with no tokenizer.json in it \(.*"
                                          r"fix: the path of a tokenizer.json or of the directory that holds one"):
        check_tokenizer(absolute_paths(job_with(tmp_path, placeholder_sources, tokenizer="slow")))
    # `gpt2` stays GPT-2's BPE beside a local gpt2/ directory (a downloaded model's, say).
    (tmp_path / "gpt2").mkdir()
    os.link(path, tmp_path / "gpt2" / "tokenizer.json")
    assert absolute_paths(job_with(tmp_path, placeholder_sources, tokenizer="gpt2")).data.tokenizer == "gpt2"


def test_the_train_job_refuses_a_mismatched_vocabulary_before_starting_ray():
    out = subprocess.run([sys.executable, "jobs/train.py", "--config", os.path.join(CONFIGS, "demo.yaml"),
                          "--set", "model.overrides.vocab_size=1024"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "model.overrides.vocab_size to 50,304" in out.stdout + out.stderr
    assert "Ray" not in out.stdout + out.stderr  # no cluster was started or joined


def token_stream(tok) -> np.ndarray:
    """TEXTS in order as `tok` tokenizes them, its EOS after each."""
    return np.concatenate([np.append(np.array(ids, dtype=np.int32), tok.eos_id) for ids in tok.encode_batch(TEXTS)])


def tokenizer_json_job(tmp_path, path: str, seq_len: int, tokens: int):
    """One stage over TEXTS (two parquet files), tokenized with the tokenizer.json at `path`."""
    write_docs(str(tmp_path / "a" / "part-0.parquet"), TEXTS[:30])
    write_docs(str(tmp_path / "a" / "part-1.parquet"), TEXTS[30:])
    return job_from_dict({
        "run": {"workers": 1, "seed": 1},
        "data": {"tokenizer": path, "tokenize_tasks": 1},
        "sources": {"a": {"path": str(tmp_path / "a" / "*.parquet"), "format": "parquet", "validation_docs": 0}},
        "model": {"preset": "tiny"},
        "curriculum": {"target_tokens": tokens,
                       "stages": [{"name": "s0", "seq_len": seq_len, "tokens": tokens, "batch_size": 8,
                                   "mix": {"a": 1.0}}]},
    }, "<test>")


@pytest.mark.ray
def test_a_tokenizer_json_runs_through_the_ray_pipeline(ray_cluster, tmp_path, ray_packers):
    path = train_tokenizer_json(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(path)
    stream = token_stream(tok)
    seq_len = 8
    usable = (len(stream) - 1) // seq_len * seq_len
    job = tokenizer_json_job(tmp_path, path, seq_len, usable)
    check_tokenizer(job)
    _, per_rank, end = run_stage(job, 0, {}, 1, ray_packers)
    targets = np.concatenate([b["tokens"] for rank in per_rank for b in rank])[:, 1:].ravel()
    # The Ray Data tasks tokenized with this tokenizer, not GPT-2's: every document in order,
    # this tokenizer's EOS after each, every id inside its small vocabulary.
    assert (targets[:usable] == stream[1:1 + usable]).all()
    assert targets.max() < tok.vocab_size < 1000
    assert end["a"]["stats"]["documents"] == 60 and end["a"]["stats"]["eos"] == int((targets == tok.eos_id).sum())
    assert tok.decode(stream[:40]).startswith("Document 0 counts 0 apples")


@pytest.mark.ray
def test_the_run_tokenizes_with_the_tokenizer_json_read_at_its_start(ray_cluster, tmp_path):
    """The coordinator reads the tokenizer.json once and ships its content to every tokenize task:
    a file rewritten after the run started (here another tokenizer, which tokenizes TEXTS
    otherwise) changes no stage's ids. Before, each new task process loaded the file anew."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator
    from yxanul_ray.stage_data import iter_worker_batches

    path = train_tokenizer_json(str(tmp_path / "tokenizer.json"))
    content, identity = run_tokenizer(path)
    assert identity == tokenizer_identity(path)
    assert load_tokenizer(content).encode_batch(TEXTS) == load_tokenizer(path).encode_batch(TEXTS)
    stream = token_stream(load_tokenizer(path))
    usable = (len(stream) - 1) // 8 * 8
    job = tokenizer_json_job(tmp_path, path, 8, usable)
    coord = CurriculumCoordinator.remote(job.to_dict(), 1)
    try:
        assert ray.get(coord.join.remote({}), timeout=120)  # constructed: it has read the file
        other = train_tokenizer_json(str(tmp_path / "other.json"), vocab=300)
        assert not np.array_equal(token_stream(load_tokenizer(other))[:usable], stream[:usable])
        os.replace(other, path)  # the run's file, rewritten mid-run
        got = ray.get(coord.stage_input.remote(0, 0), timeout=120)
        batches = list(iter_worker_batches(got["iterator"], got["schedule"], got["source_ids"]))
        targets = np.concatenate([b["tokens"] for b in batches])[:, 1:].ravel()
        assert (targets[:usable] == stream[1:1 + usable]).all()
    finally:
        ray.kill(coord)
