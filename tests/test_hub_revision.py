"""Hub sources are pinned to a commit when a run starts, so the run, a restarted coordinator and
a resume list the same files. The Hub is unreachable here: a local HTTP server answers the two
API calls huggingface_hub makes (dataset info at a revision), so the real client code runs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from yxanul_ray.config import ConfigError, job_from_dict
from yxanul_ray.driver import pin_hub_revisions
from yxanul_ray.hub import SourceUnavailable, hub_root, pin_revision
from yxanul_ray.resume_check import with_saved_revisions

SHA_MAIN = "1" * 40
SHA_V1 = "2" * 40
SHA_CONVERTED = "3" * 40
ROUTES = {
    "/api/datasets/org/corpus": SHA_MAIN,
    f"/api/datasets/org/corpus/revision/{SHA_MAIN}": SHA_MAIN,
    "/api/datasets/org/corpus/revision/v1.0": SHA_V1,
    "/api/datasets/org/corpus/revision/refs%2Fconvert%2Fparquet": SHA_CONVERTED,
}


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub's dataset-info API on a loopback port; yields the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            asked.append(path)
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
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
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
    # A commit is not asked again; a mirror is one snapshot, with nothing to ask.
    assert [p for p in fake_hub if p.startswith("/api/datasets/")] == [
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
    with pytest.raises(SourceUnavailable, match=r"source math \(hf://datasets/org/missing\): the Hub answered "
                       "HTTP 404"):
        pin_hub_revisions(job)


def test_a_resume_reads_the_commit_its_run_read(tmp_path):
    saved = hub_job(tmp_path, a={"hf": "org/corpus", "revision": SHA_MAIN}, b={"hf": "org/other", "revision": SHA_V1})
    config = hub_job(tmp_path, a={"hf": "org/corpus"}, b={"hf": "org/renamed"})
    resumed = with_saved_revisions(saved, config)
    # Unset in the config: the run's commit. Another dataset: nothing adopted.
    assert resumed.sources["a"].revision == SHA_MAIN and resumed.sources["b"].revision is None


def test_a_revision_on_local_files_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"sources\.a\.revision: applies to a Hub dataset"):
        hub_job(tmp_path, a={"path": str(tmp_path / "a.jsonl"), "format": "jsonl", "revision": "main"})
