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
and records every request and the content bytes sent for each file.
"""

from __future__ import annotations

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
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if not self._authorized("POST"):
                return
            parts = self.path.split("?")[0].split("/")
            # /api/{kind}/{org}/{name}/paths-info/{rev}
            hub.record("POST " + self.path)
            if len(parts) == 7 and parts[1] == "api" and parts[5] == "paths-info":
                found = hub.repo(parts[2], f"{parts[3]}/{parts[4]}", parts[6])
                if found:
                    entries = [_entry(found[1], p) for p in form.get("paths", [])
                               if os.path.exists(os.path.join(found[1], p))]
                    return self._json(200, entries)
            self._json(404, {"error": "not found"}, code="EntryNotFound")

        def _answer(self, head: bool) -> None:
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

        def _json(self, status: int, body, code: str | None = None, link: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
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
