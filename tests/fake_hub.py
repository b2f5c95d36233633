"""A stand-in for the Hugging Face Hub on a loopback port, serving local folders as dataset and
model repos at one commit each, so that huggingface_hub's own client code (HfApi, HfFileSystem,
hf_hub_download: repo info, the tree listing, paths-info, ranged downloads) runs unchanged
against it. The real Hub is unreachable from this machine; this is the hf:// path over HTTP, not
a mirror on disk.

It answers what a dataset's reader and a tokenizer's download ask ({kind}: datasets or models):
- GET  /api/{kind}/{repo}[/revision/{rev}]            repo info: its commit
- GET  /api/{kind}/{repo}/tree/{rev}[/{path}]          a folder's entries (recursive or not), paged
- POST /api/{kind}/{repo}/paths-info/{rev}             entries for named paths
- GET  /datasets/{repo}/resolve/{rev}/{path} (and HEAD; a model's without `/datasets`): a file,
  or the byte range asked for
- POST /api/repos/create, /api/validate-yaml, /api/models/{repo}/preupload/{rev} and
  /api/models/{repo}/commit/{rev}: what `HfApi.upload_folder` asks, every file sent inline, the
  pushed files kept under `pushed_to`
and records every request and the content bytes sent for each file. `throttle` holds answers
(status, headers) given to the next API requests instead of theirs: a rate-limited or busy Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    """`with FakeHub({"org/corpus": (commit, folder)}, models={...}) as hub:` serves each folder
    as a dataset (or model) repo; `hub.endpoint` is what HF_ENDPOINT (or `endpoint=`) names."""

    def __init__(self, datasets: dict[str, tuple[str, str]], models: dict[str, tuple[str, str]] | None = None,
                 token: str | None = None, page_size: int = 1000, latency_s: float = 0.0):
        self.repos = {("datasets", r): v for r, v in datasets.items()}
        self.repos.update({("models", r): v for r, v in (models or {}).items()})
        self.token = token
        """Set: every repo is gated, and a request without `Authorization: Bearer <token>` is
        answered 401, as the Hub answers for a gated or private repo."""
        self.refused: list[str] = []
        """Requests answered 401 for want of the token."""
        self.page_size = page_size
        """Tree entries per answer, as the Hub pages them (1,000), the rest behind a Link header."""
        self.latency_s = latency_s
        """Added to every answer: a round trip to a Hub that is not on this machine."""
        self.most_at_once = 0
        """The most requests in their round trip (latency_s) at one time: 1 for a client that asks
        in turn."""
        self._in_flight = 0
        self.asked: list[str] = []
        self.bytes_sent: Counter[str] = Counter()
        """Content bytes sent per file (repo/path), ranged reads included."""
        self.throttle: list[tuple[int, dict[str, str]]] = []
        """Answers for the next API requests, first first, each (status, headers), e.g.
        (429, {"Retry-After": "2"})."""
        self.pushed_to: str | None = None
        """A folder: a pushed model repo's files land in pushed_to/<org>/<name>/."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def round_trip(self) -> None:
        """The added latency of one answer, counting the requests waiting on it together."""
        with self._lock:
            self._in_flight += 1
            self.most_at_once = max(self.most_at_once, self._in_flight)
        try:
            time.sleep(self.latency_s)
        finally:
            with self._lock:
                self._in_flight -= 1

    def record(self, line: str, file: str | None = None, sent: int = 0) -> None:
        with self._lock:
            self.asked.append(line)
            if file:
                self.bytes_sent[file] += sent

    def repo(self, kind: str, repo_id: str, revision: str) -> tuple[str, str] | None:
        """(commit, folder) when the repo exists at `revision` (its commit, or `main`)."""
        found = self.repos.get((kind, repo_id))
        if found and urllib.parse.unquote(revision) in (found[0], "main"):
            return found
        return None


def as_process_default(monkeypatch, endpoint: str) -> None:
    """What HF_ENDPOINT=endpoint in this process's environment makes of huggingface_hub's
    defaults, which it reads once, at its import."""
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def hub_offline_mode(monkeypatch, on: bool = True) -> None:
    """What HF_HUB_OFFLINE=1 (or its absence) in this process's environment makes of
    huggingface_hub's `is_offline_mode()`, which reads it once, at the library's import."""
    if on:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", on)


def _entry(folder: str, rel: str) -> dict:
    full = os.path.join(folder, rel)
    if os.path.isdir(full):
        return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel}
    with open(full, "rb") as f:
        oid = hashlib.sha1(f.read()).hexdigest()
    return {"type": "file", "oid": oid, "size": os.path.getsize(full), "path": rel}


def _children(folder: str, rel: str, recursive: bool) -> list[dict]:
    """A folder's entries as the tree endpoint lists them, paths relative to the repo."""
    out = []
    for name in sorted(os.listdir(os.path.join(folder, rel))):
        child = f"{rel}/{name}" if rel else name
        out.append(_entry(folder, child))
        if recursive and os.path.isdir(os.path.join(folder, child)):
            out.extend(_children(folder, child, True))
    return out


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub serves it

        def do_HEAD(self):  # noqa: N802 - http.server's name
            hub.round_trip()
            if self._authorized("HEAD"):
                self._answer(head=True)

        def do_GET(self):  # noqa: N802 - http.server's name
            hub.round_trip()
            if self._authorized("GET"):
                self._answer(head=False)

        def do_POST(self):  # noqa: N802 - http.server's name
            hub.round_trip()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if not self._authorized("POST") or self._throttled():
                return
            parts = self.path.split("?")[0].split("/")
            if parts[1:3] == ["api", "repos"] or parts[1:3] == ["api", "validate-yaml"] or (
                    len(parts) >= 7 and parts[5] in ("preupload", "commit")):
                hub.record("POST " + self.path)
                return self._upload(parts, body)
            form = urllib.parse.parse_qs(body.decode())
            # /api/{kind}/{org}/{name}/paths-info/{rev}
            hub.record("POST " + self.path)
            if len(parts) == 7 and parts[1] == "api" and parts[5] == "paths-info":
                found = hub.repo(parts[2], f"{parts[3]}/{parts[4]}", parts[6])
                if found:
                    entries = [_entry(found[1], p) for p in form.get("paths", [])
                               if os.path.exists(os.path.join(found[1], p))]
                    return self._json(200, entries)
            self._json(404, {"error": "not found"}, code="EntryNotFound")

        def _throttled(self) -> bool:
            if not self.path.startswith("/api/"):
                return False
            with hub._lock:
                answer = hub.throttle.pop(0) if hub.throttle else None
            if answer is None:
                return False
            hub.record(f"{answer[0]} for {self.path}")
            self._json(answer[0], {"error": "throttled"}, headers=answer[1])
            return True

        def _upload(self, parts: list[str], body: bytes) -> None:
            if parts[2] == "repos":  # create: {name, organization, type}
                asked = json.loads(body)
                repo = f"{asked.get('organization')}/{asked['name']}" if asked.get("organization") else asked["name"]
                return self._json(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})
            if parts[2] == "validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            repo = f"{parts[3]}/{parts[4]}"
            if parts[5] == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
            folder = os.path.join(hub.pushed_to, repo)
            for line in body.decode().splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    path = os.path.join(folder, op["value"]["path"])
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(base64.b64decode(op["value"]["content"]))
            commit = hashlib.sha1(body).hexdigest()
            self._json(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{commit}", "commitOid": commit})

        def _answer(self, head: bool) -> None:
            if self._throttled():
                return
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.split("/")
            query = urllib.parse.parse_qs(url.query)
            if parts[1] == "api" and parts[2] in ("datasets", "models") and len(parts) >= 5:
                hub.record(("HEAD " if head else "") + self.path)
                return self._api(parts[2], f"{parts[3]}/{parts[4]}", parts[5:], query)
            if parts[1] == "datasets" and len(parts) >= 7 and parts[4] == "resolve":
                return self._file("datasets", f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:]), head)
            if len(parts) >= 6 and parts[3] == "resolve":
                return self._file("models", f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), head)
            hub.record(("HEAD " if head else "") + self.path)
            self._json(404, {"error": "not found"}, code="RepoNotFound")

        def _authorized(self, method: str) -> bool:
            if hub.token is None or self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            with hub._lock:
                hub.refused.append(f"{method} {self.path}")
            self._json(401, {"error": "Access to this dataset is restricted; you must be authenticated."},
                       code="GatedRepo")
            return False

        def _api(self, kind: str, repo_id: str, rest: list[str], query: dict) -> None:
            revision = rest[1] if len(rest) >= 2 else "main"
            found = hub.repo(kind, repo_id, revision)
            if found is None:
                exists = (kind, repo_id) in hub.repos
                code = "RevisionNotFound" if exists else "RepoNotFound"
                return self._json(404, {"error": f"{code}: {repo_id}@{revision}"}, code=code)
            commit, folder = found
            if not rest or rest[0] == "revision":
                siblings = [{"rfilename": e["path"]} for e in _children(folder, "", True) if e["type"] == "file"]
                return self._json(200, {"id": repo_id, "sha": commit, "private": False, "siblings": siblings})
            if rest[0] == "tree":
                rel = urllib.parse.unquote("/".join(rest[2:]))
                if rel and not os.path.exists(os.path.join(folder, rel)):
                    return self._json(404, {"error": f"{rel} not found"}, code="EntryNotFound")
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                if rel and os.path.isfile(os.path.join(folder, rel)):
                    return self._json(200, [_entry(folder, rel)])
                entries = _children(folder, rel, recursive)
                start = int(query.get("cursor", ["0"])[0])
                page = entries[start:start + hub.page_size]
                if start + hub.page_size >= len(entries):
                    return self._json(200, page)
                rest = {k: v[0] for k, v in query.items()} | {"cursor": str(start + hub.page_size)}
                following = f"{hub.endpoint}{self.path.split('?')[0]}?{urllib.parse.urlencode(rest)}"
                return self._json(200, page, link=f'<{following}>; rel="next"')
            self._json(404, {"error": "not found"}, code="EntryNotFound")

        def _file(self, kind: str, repo_id: str, revision: str, rel: str, head: bool) -> None:
            found = hub.repo(kind, repo_id, revision)
            rel = urllib.parse.unquote(rel)
            full = os.path.join(found[1], rel) if found else ""
            if not found or not os.path.isfile(full):
                hub.record(("HEAD " if head else "GET ") + f"{repo_id}/{rel} (missing)")
                return self._json(404, {"error": "not found"}, code="EntryNotFound")
            size = os.path.getsize(full)
            start, end = 0, size - 1
            ranged = self.headers.get("Range") or self.headers.get("range")
            if ranged and ranged.startswith("bytes="):
                first, _, last = ranged[6:].partition("-")
                start, end = int(first or 0), min(int(last) if last else size - 1, size - 1)
            if start >= size and size:
                hub.record(f"GET {repo_id}/{rel} bytes {start}- (past the end)")
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with open(full, "rb") as f:
                f.seek(start)
                body = f.read(end - start + 1)
            if not head:
                hub.record(f"GET {repo_id}/{rel} bytes {start}-{end}", f"{repo_id}/{rel}", len(body))
            else:
                hub.record(f"HEAD {repo_id}/{rel}")
            self.send_response(206 if ranged else 200)
            self.send_header("X-Repo-Commit", found[0])
            self.send_header("ETag", '"' + hashlib.sha1(f"{rel}:{size}".encode()).hexdigest() + '"')
            self.send_header("Accept-Ranges", "bytes")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, body, code: str | None = None, link: str | None = None,
                  headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            if code:
                self.send_header("X-Error-Code", code)
            if link:
                self.send_header("Link", link)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler
