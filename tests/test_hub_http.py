"""The hf:// path over HTTP: huggingface_hub's own client code (HfApi, HfFileSystem,
hf_hub_download) against a stand-in Hub on a loopback port (tests/fake_hub.py), since the real
one is unreachable here. What a mirror on disk cannot show: the tree listing, ranged reads, and
that every process of a run (the driver, the coordinator, Ray's read tasks) asks the same Hub,
the one the job names, whatever HF_ENDPOINT each process's environment has."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import yaml
from huggingface_hub import constants as hf_constants

from tests.fake_hub import FakeHub, as_process_default
from tests.helpers import train_tokenizer_json
from tests.pipeline_helpers import run_stage, write_docs
from tests.test_hub_layout import FINEWEB_EDU_CARD
from yxanul_ray.check import connectivity
from yxanul_ray.checkpoint import TrainState
from yxanul_ray.config import job_from_dict
from yxanul_ray.hub import Redacted, SourceUnavailable, resolve_files
from yxanul_ray.local_data import local_stage
from yxanul_ray.manifest import list_sources
from yxanul_ray.preflight import check_tokenizer, partial_copies, pin_hub_revisions
from yxanul_ray.readers import read_file_docs, read_holdout_docs
from yxanul_ray.resume_check import review_resume, with_saved_revisions
from yxanul_ray.specs import ConfigError
from yxanul_ray.stage_data import iter_worker_batches, read_spec
from yxanul_ray.tokenizer import load_tokenizer, run_tokenizer

SHA = "c" * 40
TOK = load_tokenizer("gpt2")


def job_of(sources: dict, **data):
    return job_from_dict({
        "sources": sources,
        "data": data,
        "curriculum": {"target_tokens": 256, "stages": [
            {"name": "s", "seq_len": 8, "tokens": 256, "batch_size": 8, "mix": {next(iter(sources)): 1.0}}]},
        "model": {"preset": "tiny"},
    }, "<test>")


def names(files, root: str) -> list[str]:
    return [p.split(root + "/", 1)[1] for p in files.paths]


def test_the_hub_lists_what_a_mirror_of_the_same_folder_lists(tmp_path):
    """Card configs (a list of globs), the split conventions, and jsonl, listed by HfFileSystem
    over HTTP and by the mirror's reader on disk: the same files, in the same order, sizes alike."""
    repo = tmp_path / "datasets" / "org" / "corpus"
    write_docs(str(repo / "data" / "train-00000-of-00002.parquet"), ["a"] * 3)
    write_docs(str(repo / "data" / "train-00001-of-00002.parquet"), ["b"] * 4)
    write_docs(str(repo / "data" / "test-00000-of-00001.parquet"), ["c"])
    write_docs(str(repo / "extra" / "x" / "part-0.parquet"), ["d"] * 2)
    (repo / "jsonl").mkdir()
    (repo / "jsonl" / "0.jsonl").write_text(json.dumps({"text": "e"}) + "\n")
    with pa.OSFile(str(repo / "jsonl" / "1.jsonl.zst"), "wb") as raw, pa.CompressedOutputStream(raw, "zstd") as z:
        z.write((json.dumps({"text": "f"}) + "\n").encode())
    cases = [({"split": "train"}, None), ({"split": "test"}, None),
             ({"hf_config": "both"}, "- config_name: both\n  data_files: [data/train-*, extra/**/*.parquet]\n"),
             ({"format": "jsonl"}, "- config_name: default\n  data_files: jsonl/*\n")]
    with FakeHub({"org/corpus": (SHA, str(repo))}) as hub:
        for settings, card in cases:
            (repo / "README.md").write_text(f"---\nconfigs:\n{card}---\n" if card else "# no configs\n")
            on_hub = resolve_files(job_of({"a": {"hf": "org/corpus", "revision": SHA, **settings}}).sources["a"],
                                   hub.endpoint)
            mirrored = resolve_files(job_of({"a": {"hf": "org/corpus", "hf_mirror": str(tmp_path), **settings}})
                                     .sources["a"])
            assert on_hub.endpoint == hub.endpoint and mirrored.endpoint is None
            assert names(on_hub, f"org/corpus@{SHA}") == names(mirrored, "org/corpus") != [], settings
            assert on_hub.sizes == mirrored.sizes, settings
        # A commit this Hub lacks (a resume on another Hub, say), and a dataset it lacks: the
        # Hub's own answer, not HfFileSystem's "repository not found" FileNotFoundError.
        for settings, answer in ((("org/corpus", "e" * 40), "404 RevisionNotFound"),
                                 (("org/corpos", SHA), "404 RepoNotFound")):
            spec = job_of({"a": {"hf": settings[0], "revision": settings[1]}}).sources["a"]
            with pytest.raises(SourceUnavailable, match=rf"source a \(hf://datasets/{settings[0]}@{settings[1]} on "
                                                        rf"{hub.endpoint}\): the Hub answered HTTP {answer}$"):
                resolve_files(spec, hub.endpoint)
    assert names(on_hub, f"org/corpus@{SHA}") == ["jsonl/0.jsonl", "jsonl/1.jsonl.zst"]
    assert all("huggingface.co" not in line for line in hub.asked)


def test_the_hub_s_parquet_copy_is_read_one_config_at_a_time(tmp_path):
    """The refs/convert/parquet branch holds `<config>/<split>/NNNN.parquet` and no card, so the
    layout conventions find the train folder of every config. Before, a source naming no config
    listed them all, and trained on gsm8k's `main` and `socratic` questions both."""
    repo = tmp_path / "datasets" / "org" / "corpus"
    for rel in ("main/train/0000.parquet", "main/train/0001.parquet", "main/test/0000.parquet",
                "socratic/train/0000.parquet"):
        write_docs(str(repo / rel), [f"text of {rel}"] * 2)
    single = tmp_path / "single" / "datasets" / "org" / "corpus"
    for rel in ("default/partial-train/0000.parquet", "default/partial-train/0001.parquet"):
        write_docs(str(single / rel), [f"text of {rel}"])
    with FakeHub({"org/corpus": (SHA, str(repo)), "org/single": (SHA, str(single))}) as hub:
        def listed(**settings):
            spec = job_of({"a": {"hf": "org/corpus", "revision": SHA, **settings}}).sources["a"]
            return names(resolve_files(spec, hub.endpoint), f"{spec.hf}@{SHA}")

        with pytest.raises(SourceUnavailable, match=r"split 'train' is in 2 config folders \(main, socratic\), "
                                                    r"laid out as the Hub's parquet copy .*fix: sources.a.hf_config"):
            listed()
        assert listed(hf_config="main") == ["main/train/0000.parquet", "main/train/0001.parquet"]
        assert listed(hf_config="socratic") == ["socratic/train/0000.parquet"]
        assert listed(split="test") == ["main/test/0000.parquet"]  # one config has that split
        # A misspelt config is named as one, with the folders there are; before, the error said the
        # dataset had no parquet files and suggested this very copy.
        with pytest.raises(SourceUnavailable, match=r"config 'mian' is not a folder of the dataset, whose card names "
                                                    r"no configs \(its folders: main, socratic\); fix: sources.a.hf_"):
            listed(hf_config="mian")
        assert listed(hf="org/single") == ["default/partial-train/0000.parquet", "default/partial-train/0001.parquet"]
        # A copy of only a split's first part is named at the start, as it runs dry sooner than the dataset.
        for hf, config, partial in (("org/single", None, ["a"]), ("org/corpus", "main", [])):
            job = job_of({"a": {"hf": hf, "revision": SHA, "hf_config": config}}, hf_endpoint=hub.endpoint)
            assert partial_copies(job, list_sources(job)) == partial


def test_a_run_s_start_asks_the_hub_about_its_sources_at_once(tmp_path):
    """Pinning and listing are a round trip or a few per source, asked together, so a run's start
    waits for the slowest source, not for their sum (the time that saves is measured in the
    journal, not asserted here). `check`'s connectivity lists and reads each source's first
    document the same way, its checks in the config's order."""
    repos = {}
    for name in ("fineweb", "math", "code"):
        write_docs(str(tmp_path / name / "data" / "train-00000-of-00001.parquet"), [f"{name} document"])
        repos[f"org/{name}"] = (SHA, str(tmp_path / name))
    with FakeHub(repos, latency_s=0.5) as hub:
        job = job_of({n: {"hf": f"org/{n}"} for n in ("fineweb", "math", "code")}, hf_endpoint=hub.endpoint)
        job = pin_hub_revisions(job)
        assert [s.revision for s in job.sources.values()] == [SHA] * 3 and hub.most_at_once == 3
        hub.most_at_once = 0
        listing = list_sources(job)
        assert hub.most_at_once >= 2 and [len(f.paths) for f in listing.files.values()] == [1, 1, 1]
        hub.most_at_once = 0
        mixed = job_of({"fineweb": {"hf": "org/fineweb"}, "math": {"hf": "org/mathx"}, "code": {"hf": "org/code"}},
                       hf_endpoint=hub.endpoint)
        checks, files = connectivity(mixed)
        assert hub.most_at_once >= 2 and list(files) == ["fineweb", "code"]
        assert [(c.name, c.ok) for c in checks] == [("connectivity fineweb", True), ("connectivity math", False),
                                                    ("connectivity code", True)]
        assert "org/mathx" in checks[1].detail and "404" in checks[1].detail
        # The first error in the config's order is the one raised, as when asked in turn.
        missing = job_of({n: {"hf": f"org/{n}x"} for n in ("fineweb", "math")}, hf_endpoint=hub.endpoint)
        with pytest.raises(SourceUnavailable, match=r"^source fineweb \(hf://datasets/org/finewebx on .*404"):
            pin_hub_revisions(missing)


def test_a_large_file_read_over_http_gives_the_local_documents_and_its_holdout_reads_its_end(tmp_path):
    """Training reads the file in ranged blocks; the held-out documents, the file's last 16, take
    its footer and last row group, not the whole file nor an 8 MiB read-ahead block."""
    repo = tmp_path / "repo"
    rng = np.random.default_rng(0)
    texts = [rng.bytes(1500).hex() for _ in range(8000)]  # 3,000 chars each, hardly compressible: ~24 MiB
    path = repo / "data" / "train-00000-of-00001.parquet"
    write_docs(str(path), texts, row_group_size=500)
    size = os.path.getsize(path)
    assert size > 20 << 20
    local = job_of({"a": {"path": str(path), "validation_docs": 16}})
    with FakeHub({"org/corpus": (SHA, str(repo))}) as hub:
        remote = job_of({"a": {"hf": "org/corpus", "revision": SHA, "validation_docs": 16}}, hf_endpoint=hub.endpoint)
        files = list_sources(remote).files["a"]  # what the coordinator lists, at the job's endpoint
        spec, local_spec = read_spec(remote, files), read_spec(local, resolve_files(local.sources["a"]))
        held_out = read_holdout_docs(spec)
        assert held_out == read_holdout_docs(local_spec) == texts[-16:]
        holdout_bytes = hub.bytes_sent[f"org/corpus/{path.relative_to(repo)}"]
        assert holdout_bytes < 4 << 20, (holdout_bytes, size)  # 1.69 MiB of 23.1: the footer and one row group

        def docs(s):
            return [t for table in read_file_docs(s, Redacted(None), 0, 0, 0, None, False)
                    for t in table.column("text").to_pylist()]

        assert docs(spec) == docs(local_spec) == texts[:-16]
    assert all("huggingface.co" not in line for line in hub.asked)


@pytest.mark.ray
def test_a_stage_on_the_hub_reads_the_endpoint_the_job_names_in_every_read_task(ray_cluster, tmp_path, ray_packers):
    """The job names the Hub (data.hf_endpoint); this process's and Ray's workers' environments
    name none, so their default is huggingface.co, unreachable here. The stage's read tasks run in
    Ray's processes and must take the endpoint from the job, as the listing did."""
    assert "HF_ENDPOINT" not in os.environ
    repo = tmp_path / "repo"
    texts = [f"served document {i} " * 4 for i in range(40)]
    write_docs(str(repo / "data" / "train-00000-of-00002.parquet"), texts[:20])
    write_docs(str(repo / "data" / "train-00001-of-00002.parquet"), texts[20:])
    local = job_of({"a": {"path": str(repo / "data" / "*.parquet"), "validation_docs": 0}})
    with FakeHub({"org/corpus": (SHA, str(repo))}) as hub:
        job = job_of({"a": {"hf": "org/corpus", "revision": SHA, "validation_docs": 0}}, hf_endpoint=hub.endpoint)
        files = list_sources(job).files
        _, per_rank, _ = run_stage(job, 0, {}, 2, ray_packers, files)
    batches, _ = local_stage(local, 0, {}, {"a": resolve_files(local.sources["a"])}, TOK.eos_id)
    local_rows = np.concatenate([b["tokens"] for b in batches])
    ray_rows = np.concatenate([b["tokens"] for rank in per_rank for b in rank])
    assert ray_rows.shape == local_rows.shape == (32, 9)
    assert sorted(map(bytes, ray_rows)) == sorted(map(bytes, local_rows))
    served = [line for line in hub.asked if line.startswith("GET org/corpus/data/")]
    assert {line.split()[1] for line in served} == {"org/corpus/data/train-00000-of-00002.parquet",
                                                    "org/corpus/data/train-00001-of-00002.parquet"}


def test_the_run_pins_this_process_s_hub_and_every_later_reader_asks_it(tmp_path, monkeypatch, capsys):
    """Unset, data.hf_endpoint is this process's HF_ENDPOINT, pinned into the job the coordinator,
    its tokenizer read and a resume take; a local job pins none; a bad one is a ConfigError."""
    repo = tmp_path / "repo"
    write_docs(str(repo / "data" / "train-00000-of-00001.parquet"), ["x"] * 4)
    tok_repo = tmp_path / "tok"
    tok_repo.mkdir()
    train_tokenizer_json(str(tok_repo / "tokenizer.json"))
    with FakeHub({"org/corpus": (SHA, str(repo))}, models={"org/tok": (SHA, str(tok_repo))}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        as_process_default(monkeypatch, hub.endpoint)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        job = job_of({"a": {"hf": "org/corpus"}}, tokenizer="org/tok")
        pinned = pin_hub_revisions(job)
        assert pinned.data.hf_endpoint == hub.endpoint and pinned.sources["a"].revision == SHA
        assert pinned.data.tokenizer == f"org/tok@{SHA}"
        assert f"Hub: {hub.endpoint} (from HF_ENDPOINT; every process of the run reads it)" in capsys.readouterr().out
        check_tokenizer(pinned)
        # The coordinator's process has the cluster's environment: huggingface.co, unless the job says.
        as_process_default(monkeypatch, "https://huggingface.co")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "another-node's-cache"))
        content, identity = run_tokenizer(pinned.data.tokenizer, pinned.data.hf_endpoint)
        assert load_tokenizer(content).vocab_size == 320 and identity.startswith("sha256:")
        assert list_sources(pinned).files["a"].endpoint == hub.endpoint
        # A resume whose config names no Hub reads the run's; one that names another notes it.
        saved = job_from_dict({**pinned.to_dict(), "path": "job.json"}, "job.json")
        assert with_saved_revisions(saved, job).data.hf_endpoint == hub.endpoint
    moved = job_of({"a": {"hf": "org/corpus"}}, tokenizer="org/tok", hf_endpoint="https://hf-mirror.example")
    resumed = with_saved_revisions(saved, moved)
    assert resumed.data.hf_endpoint == "https://hf-mirror.example"
    assert resumed.sources["a"].revision == SHA
    review = review_resume(saved, resumed, TrainState(), None, None)
    assert review.conflicts == [] and any(n.startswith(f"data.hf_endpoint: checkpoint {hub.endpoint!r}, now "
                                                       "'https://hf-mirror.example'") for n in review.notes)
    # A job that reads no Hub pins none; job.json does not name one.
    local = job_of({"a": {"path": str(repo / "data" / "*.parquet")}})
    assert pin_hub_revisions(local).data.hf_endpoint is None
    as_process_default(monkeypatch, "hub.internal:8080")
    with pytest.raises(ConfigError, match=r"<test>: HF_ENDPOINT: 'hub.internal:8080' is not an http\(s\) URL"):
        pin_hub_revisions(job)
    with pytest.raises(ConfigError, match=r"data.hf_endpoint: holds credentials, which would reach the logs and "
                                          r"job.json; give them as HF_TOKEN instead"):
        job_of({"a": {"hf": "org/corpus"}}, hf_endpoint="https://user:hf_secret@hub.example")


@pytest.mark.ray
def test_a_gated_dataset_is_read_with_the_driver_s_token_and_no_log_holds_it(ray_cluster, tmp_path, monkeypatch):
    """HF_TOKEN is in the environment of the process that starts the run (this one), not in the
    cluster's. The coordinator is handed it and reads the gated dataset with it: its held-out
    documents, and a stage's read tasks in Ray's worker processes. No Ray log holds it."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator
    from yxanul_ray.preflight import hub_token

    token = "hf_" + os.urandom(16).hex()
    repo = tmp_path / "repo"
    texts = [f"gated document {i} " * 4 for i in range(40)]
    write_docs(str(repo / "data" / "train-00000-of-00001.parquet"), texts)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    with FakeHub({"org/gated": (SHA, str(repo))}, token=token) as hub:
        job = job_of({"a": {"hf": "org/gated", "revision": SHA, "validation_docs": 4}}, hf_endpoint=hub.endpoint)
        with pytest.raises(SourceUnavailable, match=r"source a \(hf://datasets/org/gated@c{40} on http://127\.0\.0\.1:"
                                                    r"\d+\): the Hub answered HTTP 401 GatedRepo; check HF_TOKEN"):
            list_sources(job)
        assert hub_token(job) is None
        monkeypatch.setenv("HF_TOKEN", token)
        assert repr(hub_token(job)) == "<redacted>" and token not in repr(job.to_dict())
        refused = len(hub.refused)
        coord = CurriculumCoordinator.remote(job.to_dict(), 2, list_sources(job), hub_token(job))
        try:
            held_out = ray.get(coord.validation_rows.remote(8, 4), timeout=120)["a"]
            assert held_out.shape == (4, 9)
            got = [ray.get(coord.stage_input.remote(0, rank), timeout=120) for rank in range(2)]
            with ThreadPoolExecutor(max_workers=2) as pool:  # the ranks of a split read together
                reads = [pool.submit(lambda g=g: list(iter_worker_batches(g["iterator"], g["schedule"],
                                                                           g["source_ids"], world=2))) for g in got]
                per_rank = [r.result(timeout=120) for r in reads]
        finally:
            ray.kill(coord)
        assert sum(len(b["tokens"]) for rank in per_rank for b in rank) == 32
        assert hub.refused[refused:] == [] or all("/agent-harnesses" in r for r in hub.refused[refused:])
        assert any(line.startswith("GET org/gated/data/") for line in hub.asked)
    logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    for folder, _, names in os.walk(logs):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                assert token.encode() not in f.read(), name


def test_the_run_s_token_is_the_one_huggingface_hub_would_send(tmp_path, monkeypatch):
    """HF_TOKEN first; else the token `hf auth login` saved (HF_TOKEN_PATH), which huggingface_hub
    sends unasked and the driver pins and lists with, so it is the one the coordinator is handed
    (test_orchestration runs a job with only that file); none where implicit tokens are off."""
    from yxanul_ray.hub import hf_token
    from yxanul_ray.preflight import hub_token

    job = job_of({"a": {"hf": "org/gated", "revision": SHA}})
    token_file = tmp_path / "token"
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(token_file))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    assert hf_token() is None and hub_token(job) is None
    token_file.write_text("hf_from_login\n")
    assert hf_token() == "hf_from_login" and hub_token(job).value == "hf_from_login"
    assert repr(hub_token(job)) == "<redacted>"
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_old_name")
    assert hf_token() == "hf_old_name"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hf_token() == "hf_from_env"
    monkeypatch.delenv("HF_TOKEN"), monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    assert hf_token() is None


def fineweb_shaped_repo(root, folders: int = 96, per_folder: int = 25) -> None:
    """A repo laid out as HuggingFaceFW/fineweb-edu is: its card's configs, `data/<crawl>/` folders
    of shards (2,400 here, against its 2,410), and a `sample/10BT/` config. The shards are a few
    bytes each: only their names and sizes are listed."""
    for crawl in range(folders):
        folder = root / "data" / f"CC-MAIN-2024-{crawl:02d}"
        folder.mkdir(parents=True)
        for shard in range(per_folder):
            (folder / f"{shard:03d}_00000.parquet").write_bytes(b"P" * (1 + (crawl * per_folder + shard) % 97))
    (root / "sample" / "10BT").mkdir(parents=True)
    for shard in range(14):
        (root / "sample" / "10BT" / f"{shard:03d}_00000.parquet").write_bytes(b"P")
    (root / "README.md").write_text("---\n" + yaml.safe_dump(FINEWEB_EDU_CARD) + "---\n# FineWeb-Edu (shape)\n")


def test_a_fineweb_sized_listing_over_paged_http_is_the_mirror_s_whole_listing(tmp_path):
    """2,400 shards in 96 folders, listed through the Hub's paged tree endpoint (1,000 entries a
    page, the rest behind a Link header): every shard, in the mirror's order, with its size."""
    repo = tmp_path / "datasets" / "org" / "corpus"
    fineweb_shaped_repo(repo)
    with FakeHub({"org/corpus": (SHA, str(repo))}) as hub:
        for config, count in ((None, 2400), ("sample-10BT", 14)):
            on_hub = resolve_files(job_of({"a": {"hf": "org/corpus", "revision": SHA, "hf_config": config}})
                                   .sources["a"], hub.endpoint)
            mirrored = resolve_files(job_of({"a": {"hf": "org/corpus", "hf_mirror": str(tmp_path),
                                                   "hf_config": config}}).sources["a"])
            assert len(on_hub.paths) == count and names(on_hub, f"org/corpus@{SHA}") == names(mirrored, "org/corpus")
            assert on_hub.sizes == mirrored.sizes
    assert any("cursor=" in line for line in hub.asked)  # the listing went past a first page


def test_a_busy_hub_is_retried_after_the_wait_it_asks_for(tmp_path):
    """Repo info has no retries of its own: a 429 or 503 is retried after the answer's
    `Retry-After` (else 1, 2, 4 s); a wait longer than the run will sit through ends the call with
    the Hub's figure. A call that retries itself (huggingface_hub's paged listing) is not retried
    again: its failure is classified at once."""
    from huggingface_hub import HfApi, HfFileSystem

    from yxanul_ray.hub import with_retries

    write_docs(str(tmp_path / "corpus" / "data" / "train-00000-of-00001.parquet"), ["a document"])
    with FakeHub({"org/corpus": (SHA, str(tmp_path / "corpus"))}) as hub:
        api = HfApi(endpoint=hub.endpoint, token=False)
        waits: list[float] = []
        hub.throttle = [(429, {"Retry-After": "7"}), (503, {})]
        info = with_retries(lambda: api.dataset_info("org/corpus"), "source a", sleep=waits.append)
        assert info.sha == SHA and waits == [7.0, 2.0]
        hub.throttle = [(429, {"Retry-After": "3600"})]
        with pytest.raises(SourceUnavailable, match=r"^source a: the Hub answered HTTP 429 and asks to wait 3600 s "
                                                    r"\(Retry-After\); start the run again later$"):
            with_retries(lambda: api.dataset_info("org/corpus"), "source a", sleep=waits.append)
        hub.throttle = [(503, {})]
        with pytest.raises(SourceUnavailable, match=r"^source a: the Hub answered HTTP 503$"):
            with_retries(lambda: api.dataset_info("org/corpus"), "source a", own_retries=True, sleep=waits.append)
        assert waits == [7.0, 2.0]
        # HfFileSystem asks the repo's info first (no retries of its own: retried here), then
        # lists, backing off itself after the Hub's Retry-After (+1 s).
        fs = HfFileSystem(endpoint=hub.endpoint, token=False, skip_instance_cache=True)
        hub.throttle = [(429, {"Retry-After": "5"})]
        with_retries(lambda: fs.resolve_path(f"datasets/org/corpus@{SHA}"), "source a", sleep=waits.append)
        hub.throttle = [(429, {"Retry-After": "0"})]
        listed = with_retries(lambda: fs.glob(f"datasets/org/corpus@{SHA}/data/*"), "source a", own_retries=True,
                              sleep=waits.append)
        assert listed == [f"datasets/org/corpus@{SHA}/data/train-00000-of-00001.parquet"] and waits == [7.0, 2.0, 5.0]
        assert sum(a.startswith("429 for") for a in hub.asked) == 4  # 7 s, 3600 s, the info, the listing
