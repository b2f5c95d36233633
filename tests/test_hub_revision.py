"""Hub sources and a Hub tokenizer are pinned to a commit when a run starts, so the run, a
restarted coordinator and a resume read the same files. The Hub is unreachable here: a local HTTP
server answers the calls huggingface_hub makes (dataset and model info at a revision, a file's
metadata and content), so the real client code runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fake_hub import as_process_default, hub_offline_mode
from tests.helpers import TOKENIZER_TEXTS, train_tokenizer_json
from yxanul_ray.checkpoint import TrainState, save_checkpoint
from yxanul_ray.config import job_from_dict
from yxanul_ray.hub import SourceUnavailable, hub_root, pin_revision
from yxanul_ray.preflight import check_resume, check_tokenizer, pin_hub_revisions
from yxanul_ray.resume_check import with_saved_revisions
from yxanul_ray.specs import ConfigError
from yxanul_ray.tokenizer import HfTokenizer, run_tokenizer

SHA_MAIN = "1" * 40
SHA_V1 = "2" * 40
SHA_CONVERTED = "3" * 40
ROUTES = {
    "/api/datasets/org/corpus": SHA_MAIN,
    f"/api/datasets/org/corpus/revision/{SHA_MAIN}": SHA_MAIN,
    "/api/datasets/org/corpus/revision/v1.0": SHA_V1,
    "/api/datasets/org/corpus/revision/refs%2Fconvert%2Fparquet": SHA_CONVERTED,
    "/api/models/org/tok": SHA_MAIN,
    "/api/models/org/tok/revision/v1.0": SHA_V1,
}
FILES: dict[str, tuple[str, bytes]] = {}
"""A repo file's URL path -> (the commit it is served at, its content); tests fill it."""


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The Hub's dataset-info API on a loopback port; yields the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            self.do_GET(head=True)

        def do_GET(self, head: bool = False):  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            asked.append(("HEAD " if head else "") + path)
            if path in FILES:  # hf_hub_download: HEAD for the commit and etag, then GET
                commit, content = FILES[path]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", '"' + hashlib.sha1(content).hexdigest() + '"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if not head:
                    self.wfile.write(content)
                return
            sha = ROUTES.get(path)
            body = json.dumps({"id": "org/corpus", "sha": sha} if sha else {"error": "Repository not found"})
            self.send_response(200 if sha else 404)
            self.send_header("Content-Type", "application/json")
            if not sha:
                self.send_header("X-Error-Code", "RepositoryNotFound")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub_offline_mode(monkeypatch, on=False)
    endpoint = f"http://127.0.0.1:{server.server_port}"
    as_process_default(monkeypatch, endpoint)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield asked
    server.shutdown()


def hub_job(tmp_path, **sources: dict):
    return job_from_dict({
        "sources": sources,
        "curriculum": {"target_tokens": 64, "stages": [
            {"name": "s", "seq_len": 8, "tokens": 64, "batch_size": 8, "mix": {next(iter(sources)): 1.0}}]},
        "model": {"preset": "tiny"},
    }, str(tmp_path / "job.yaml"))


def test_hub_sources_are_pinned_to_the_commit_their_revision_names_now(fake_hub, tmp_path, capsys):
    (tmp_path / "mirror").mkdir()
    job = hub_job(tmp_path,
                  main={"hf": "org/corpus"},
                  tagged={"hf": "org/corpus", "revision": "v1.0"},
                  pinned={"hf": "org/corpus", "revision": SHA_V1},
                  mirrored={"hf": "org/corpus", "hf_mirror": str(tmp_path / "mirror")})
    pinned = pin_hub_revisions(job)
    assert {n: s.revision for n, s in pinned.sources.items()} == {
        "main": SHA_MAIN, "tagged": SHA_V1, "pinned": SHA_V1, "mirrored": None}
    # A commit is not asked again; a mirror is one snapshot, with nothing to ask. (The sources
    # are asked at once, so in no fixed order.)
    assert sorted(p for p in fake_hub if p.startswith("/api/datasets/")) == [
        "/api/datasets/org/corpus", "/api/datasets/org/corpus/revision/v1.0"]
    out = capsys.readouterr().out
    assert f"source main: hf://datasets/org/corpus at commit {SHA_MAIN} (the default branch now" in out
    assert f"source tagged: hf://datasets/org/corpus at commit {SHA_V1} (v1.0 now" in out
    # What the job hands the coordinator, and job.json records.
    assert pinned.to_dict()["sources"]["main"]["revision"] == SHA_MAIN


def test_the_pinned_root_is_what_HfFileSystem_reads_at_that_commit(fake_hub, tmp_path):
    from huggingface_hub import HfFileSystem

    job = hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN},
                  b={"hf": "org/corpus", "revision": "refs/convert/parquet"})
    assert hub_root(job.sources["a"]) == f"datasets/org/corpus@{SHA_MAIN}"
    assert hub_root(job.sources["b"]) == "datasets/org/corpus@refs%2Fconvert%2Fparquet"
    resolved = HfFileSystem(skip_instance_cache=True).resolve_path(f"{hub_root(job.sources['a'])}/data/x.parquet")
    assert (resolved.repo_id, resolved.revision, resolved.path_in_repo) == ("org/corpus", SHA_MAIN, "data/x.parquet")
    assert pin_revision(job.sources["b"]) == SHA_CONVERTED


def test_an_unknown_dataset_fails_naming_the_source(fake_hub, tmp_path):
    job = hub_job(tmp_path, math={"hf": "org/missing"})
    # The stand-in is this process's Hub (HF_ENDPOINT), not huggingface.co: the message says which.
    with pytest.raises(SourceUnavailable, match=r"source math \(hf://datasets/org/missing on "
                       r"http://127\.0\.0\.1:\d+\): the Hub answered HTTP 404"):
        pin_hub_revisions(job)


def test_a_resume_reads_the_commit_its_run_read(tmp_path):
    saved = hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN}, b={"hf": "org/other", "revision": SHA_V1})
    saved = with_tokenizer(saved, f"org/tok@{SHA_V1}")
    config = hub_job(tmp_path, a={"hf": "org/corpus"}, b={"hf": "org/renamed"})
    resumed = with_saved_revisions(saved, with_tokenizer(config, "org/tok"))
    # Unset in the config: the run's commit. Another dataset: nothing adopted.
    assert resumed.sources["a"].revision == SHA_MAIN and resumed.sources["b"].revision is None
    assert resumed.data.tokenizer == f"org/tok@{SHA_V1}"
    # A revision the config names, or another tokenizer, is the config's (resume_check compares them).
    for spec in ("org/tok@v1.0", "org/other-tok", "gpt2"):
        assert with_saved_revisions(saved, with_tokenizer(config, spec)).data.tokenizer == spec


def with_tokenizer(job, spec: str):
    return dataclasses.replace(job, data=dataclasses.replace(job.data, tokenizer=spec))


@pytest.fixture
def hub_tokenizers(fake_hub, tmp_path, monkeypatch):
    """org/tok on the fake Hub: a tokenizer.json of 300 ids on its default branch (commit
    SHA_MAIN) and another of 340 at v1.0 (SHA_V1), each also a local file; returns the two paths."""
    (tmp_path / "hub").mkdir()
    main = train_tokenizer_json(str(tmp_path / "hub" / "main.json"), vocab=300)
    v1 = train_tokenizer_json(str(tmp_path / "hub" / "v1.json"), vocab=340)
    for revision, commit, path in (("main", SHA_MAIN, main), (SHA_MAIN, SHA_MAIN, main), ("v1.0", SHA_V1, v1),
                                   (SHA_V1, SHA_V1, v1)):
        with open(path, "rb") as f:
            monkeypatch.setitem(FILES, f"/org/tok/resolve/{revision}/tokenizer.json", (commit, f.read()))
    return main, v1


def test_a_hub_tokenizer_is_pinned_to_a_commit_and_read_at_it(hub_tokenizers, fake_hub, tmp_path, capsys):
    """A Hub tokenizer's revision (the default branch when unset) becomes the commit the Hub
    serves now, in the job every later read gets; it loads, and is identified, by that commit's
    tokenizer.json. Before, the run and each resume read whatever the repo held at the time."""
    main, v1 = hub_tokenizers
    job = hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN})
    assert pin_hub_revisions(with_tokenizer(job, "org/tok")).data.tokenizer == f"org/tok@{SHA_MAIN}"
    assert pin_hub_revisions(with_tokenizer(job, "org/tok@v1.0")).data.tokenizer == f"org/tok@{SHA_V1}"
    out = capsys.readouterr().out
    assert f"data.tokenizer: hf://org/tok at commit {SHA_MAIN} (the default branch now; pinned" in out
    assert f"data.tokenizer: hf://org/tok at commit {SHA_V1} (v1.0 now; pinned" in out
    assert [p for p in fake_hub if p.startswith("/api/models/")] == ["/api/models/org/tok",
                                                                      "/api/models/org/tok/revision/v1.0"]
    fake_hub.clear()
    assert pin_hub_revisions(with_tokenizer(job, f"org/tok@{SHA_V1}")).data.tokenizer == f"org/tok@{SHA_V1}"
    assert fake_hub == []  # a commit is not asked again

    at_v1 = HfTokenizer(f"org/tok@{SHA_V1}")
    assert fake_hub == [f"HEAD /org/tok/resolve/{SHA_V1}/tokenizer.json", f"/org/tok/resolve/{SHA_V1}/tokenizer.json"]
    ids = at_v1.encode_batch(TOKENIZER_TEXTS)
    assert ids == HfTokenizer(v1).encode_batch(TOKENIZER_TEXTS) != HfTokenizer(main).encode_batch(TOKENIZER_TEXTS)
    # What the coordinator ships to the tokenize tasks, and records: the file's content and hash.
    assert run_tokenizer(f"org/tok@{SHA_V1}") == run_tokenizer(v1)
    assert run_tokenizer(f"org/tok@{SHA_MAIN}")[1] != run_tokenizer(v1)[1]


def test_a_hub_tokenizer_in_a_folder_of_its_repo_is_pinned_and_read_there(hub_tokenizers, fake_hub, tmp_path,
                                                                            monkeypatch, capsys):
    """`org/name/folder[@revision]`: the tokenizer.json in a folder of a model repo (as
    `from_pretrained(subfolder=)` reads it), pinned by the repo's commit, read from that folder,
    and read at the run's commit again by a resume whose config names no revision."""
    main, v1 = hub_tokenizers
    for revision, commit, path in (("v1.0", SHA_V1, v1), (SHA_V1, SHA_V1, v1), (SHA_MAIN, SHA_MAIN, main)):
        with open(path, "rb") as f:
            monkeypatch.setitem(FILES, f"/org/tok/resolve/{revision}/nested/tok/tokenizer.json", (commit, f.read()))
    job = hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN})
    pinned = pin_hub_revisions(with_tokenizer(job, "org/tok/nested/tok@v1.0"))
    assert pinned.data.tokenizer == f"org/tok/nested/tok@{SHA_V1}"
    assert f"data.tokenizer: hf://org/tok/nested/tok at commit {SHA_V1} (v1.0 now; pinned" in capsys.readouterr().out
    assert [p for p in fake_hub if p.startswith("/api/")] == ["/api/models/org/tok/revision/v1.0"]  # the repo's
    fake_hub.clear()
    assert run_tokenizer(pinned.data.tokenizer) == run_tokenizer(v1)
    assert fake_hub[-1] == f"/org/tok/resolve/{SHA_V1}/nested/tok/tokenizer.json"
    assert run_tokenizer(f"org/tok/nested/tok@{SHA_MAIN}") == run_tokenizer(main)
    # A resume's config naming the folder at no revision reads the run's commit; another folder is another tokenizer.
    assert with_saved_revisions(pinned, with_tokenizer(job, "org/tok/nested/tok")).data.tokenizer == \
        f"org/tok/nested/tok@{SHA_V1}"
    assert with_saved_revisions(pinned, with_tokenizer(job, "org/tok")).data.tokenizer == "org/tok"
    # A folder the repo lacks is refused naming the file asked for.
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'org/tok/elsewhere@v1.0' does not load \("
                       r"SourceUnavailable: data.tokenizer 'org/tok/elsewhere@v1.0' "
                       r"\(hf://org/tok/elsewhere/tokenizer.json at v1.0\): "
                       r"the Hub answered HTTP 404( \w+)?\)"):
        check_tokenizer(with_tokenizer(job, "org/tok/elsewhere@v1.0"))


def test_a_resume_loads_and_checks_the_tokenizer_commit_its_run_read(hub_tokenizers, fake_hub, tmp_path):
    """The run read v1.0's commit; the config names the repo alone, whose default branch now
    serves another tokenizer.json. The resume reads the run's commit: the same ids, compared by
    content, and checked against the model's embedding rows (here 320: the default branch's 300
    ids fit, the run's 340 do not)."""
    _, v1 = hub_tokenizers
    (tmp_path / "a.jsonl").write_text('{"text": "a document"}\n')  # a local source: the stand-in Hub lists no dataset
    job = hub_job(tmp_path, a={"path": str(tmp_path / "a.jsonl"), "format": "jsonl"})
    for rows, fits in ((384, True), (320, False)):
        saved = dataclasses.replace(job, model=dataclasses.replace(job.model, overrides={"vocab_size": rows}))
        saved = job_from_dict(with_tokenizer(saved, f"org/tok@{SHA_V1}").to_dict(), str(tmp_path / "job.yaml"))
        ckpt = str(tmp_path / f"checkpoint_{rows}")
        save_checkpoint(ckpt, {}, {}, TrainState(stage=1, coordinator={"tokenizer": run_tokenizer(v1)[1]}),
                        saved.to_dict())
        config = with_tokenizer(saved, "org/tok")
        if fits:
            assert check_resume(config, ckpt)[0].data.tokenizer == f"org/tok@{SHA_V1}"
        else:
            with pytest.raises(ConfigError, match=rf"the model has 320 embedding rows .* but data.tokenizer "
                               rf"'org/tok@{SHA_V1}' has 340 ids"):
                check_resume(config, ckpt)


def test_a_hub_tokenizer_offline_loads_a_cached_commit_but_a_branch_is_not_pinned(hub_tokenizers, fake_hub,
                                                                                   tmp_path, monkeypatch):
    main, _ = hub_tokenizers
    HfTokenizer(f"org/tok@{SHA_MAIN}")  # into the Hugging Face cache
    hub_offline_mode(monkeypatch)
    fake_hub.clear()
    offline = HfTokenizer(f"org/tok@{SHA_MAIN}").encode_batch(TOKENIZER_TEXTS)
    assert offline == HfTokenizer(main).encode_batch(TOKENIZER_TEXTS) and fake_hub == []
    job = with_tokenizer(hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN}), "org/tok")
    with pytest.raises(SourceUnavailable, match=r"data.tokenizer 'org/tok': HF_HUB_OFFLINE is set, so the Hub is not "
                       r"asked which commit to read\. Fix: .*org/name@<sha>"):
        pin_hub_revisions(job)


def test_a_hub_tokenizer_the_hub_lacks_is_a_config_error_naming_it(fake_hub, tmp_path):
    job = with_tokenizer(hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN}), "org/missing-tok")
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'org/missing-tok' does not load \(SourceUnavailable: "
                       r"data.tokenizer 'org/missing-tok' \(hf://org/missing-tok/tokenizer.json\): "
                       r"the Hub answered HTTP 404( \w+)?\)"):
        check_tokenizer(job)


def test_a_revision_on_local_files_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"sources\.a\.revision: applies to a Hub dataset"):
        hub_job(tmp_path, a={"path": str(tmp_path / "a.jsonl"), "format": "jsonl", "revision": "main"})
