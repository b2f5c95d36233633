"""Resolving a source to a sorted file list: local globs, or a Hub dataset's files for a config
and split (hub_layout: the dataset card's rules, as `datasets` reads them).

Hub sources are read as parquet (or jsonl) over `HfFileSystem` (hf://datasets/...), never through
`load_dataset(streaming=True)`, whose Ray integration reads in a single task. Calls retry with
backoff on 429/5xx/timeouts; an unreachable Hub fails in seconds with a message naming the source.
"""

from __future__ import annotations

import email.utils
import functools
import glob
import hashlib
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from yxanul_ray.hub_layout import (
    FORMAT_SUFFIXES,
    LayoutError,
    card_front_matter,
    check_one_config,
    data_file_kinds,
    is_data_file,
    named_as_other_format,
    of_format,
    split_patterns,
)
from yxanul_ray.specs import SourceSpec
from yxanul_ray.storage import StorageError, fsspec_filesystem, is_uri

T = TypeVar("T")
R = TypeVar("R")

HUB_CALLS_AT_ONCE = 8
"""Sources (and the tokenizer) asked about at once when a run starts: pinned, then listed."""

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_NETWORK_ERRORS = ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError",
                   "ConnectionError", "RemoteDisconnected", "ProtocolError", "TransportError")


def at_once(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """fn over items, HUB_CALLS_AT_ONCE at a time: a few round trips each (to the Hub or a
    bucket), so the caller waits for the slowest, not for their sum. Results come in the items'
    order, and so does the first error raised, as when they were asked in turn."""
    with ThreadPoolExecutor(max_workers=HUB_CALLS_AT_ONCE) as pool:
        return list(pool.map(fn, items))


class SourceUnavailable(RuntimeError):
    """A source cannot be listed or read; the message names it and says what to do."""


@dataclass(frozen=True)
class SourceFiles:
    source: str
    kind: str
    """'local', 'uri' (a glob at a storage URI, e.g. s3://bucket/corpus/*.parquet) or 'hf'."""
    paths: tuple[str, ...]
    """Sorted; hf paths are relative to hf:// (datasets/<repo>/...)."""
    format: str
    mirror: str | None = None
    """For 'hf': a local directory standing in for hf:// (same listing and reading code)."""
    sizes: tuple[int, ...] = ()
    """File sizes in bytes, where the listing gave them (to plan wrap-around read tasks)."""
    uri: str | None = None
    """For 'uri': the source's path, whose scheme and options open the filesystem its files are in."""
    endpoint: str | None = None
    """For 'hf' (not a mirror): the Hub the files were listed on, which every read task reads
    (data.hf_endpoint), not whatever HF_ENDPOINT the task's process has; None for the default."""


def hub_offline() -> bool:
    """huggingface_hub's offline switch (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE, as this process
    started with them: the library reads them once, at its import)."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def offline_refusal(what: str, question: str) -> SourceUnavailable:
    """The error for a Hub source under HF_HUB_OFFLINE, naming what would have been asked."""
    return SourceUnavailable(
        f"{what}: HF_HUB_OFFLINE is set, so the Hub is not {question}. Unset it to stream from the Hub, "
        "or point the source at local files (sources.<name>.path) or a mirror (sources.<name>.hf_mirror).")


def hf_token() -> str | None:
    """The token this process's Hub calls send, as huggingface_hub picks it: HF_TOKEN (or
    HUGGING_FACE_HUB_TOKEN) from the environment, else the one `hf auth login` saved on this
    machine; none where HF_HUB_DISABLE_IMPLICIT_TOKEN is set. The driver pins and lists with it,
    so it hands this one to the coordinator (preflight.hub_token): the cluster's other nodes have
    no such file. Never logged, never written to a config or checkpoint."""
    from huggingface_hub.utils import get_token_to_send

    return get_token_to_send(None)


def _http_error(exc: BaseException) -> tuple[int | None, str]:
    """(HTTP status, the Hub's error code, e.g. RevisionNotFound or GatedRepo) of a failed Hub
    call, or of the one HfFileSystem wraps in a FileNotFoundError when a repo or its revision
    cannot be read; (None, '') for any other error."""
    for error in (exc, exc.__cause__):
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None:
            return status, response.headers.get("X-Error-Code") or ""
    return None, ""


def _is_network_error(exc: BaseException) -> bool:
    return any(cls.__name__ in _NETWORK_ERRORS for cls in type(exc).__mro__) or isinstance(exc, TimeoutError)


OFFLINE_SOURCE_FIX = ("To run offline, point the source at local files (sources.<name>.path) and set "
                      "HF_HUB_OFFLINE=1; the demo config runs entirely offline.")


LONGEST_RETRY_AFTER_S = 120
"""The longest `Retry-After` waited for; a Hub asking for longer ends the call with its figure."""


def with_retries(fn: Callable[[], T], what: str, *, own_retries: bool = False, attempts: int = 6,
                 base_delay_s: float = 1.0, unreachable_attempts: int = 2, sleep=time.sleep,
                 offline_fix: str = OFFLINE_SOURCE_FIX) -> T:
    """Call fn and turn a Hub failure into SourceUnavailable naming `what` and the fix. A call
    without retries of its own (repo info, opening a file) is retried on 429/5xx after the
    answer's `Retry-After`, else with exponential backoff (1, 2, 4, ... s), and on connection
    failures only briefly, so an unreachable Hub fails within seconds. A call that retries itself
    (`own_retries`: huggingface_hub's paged listings and downloads back off on 429/5xx and network
    errors) is not retried again."""
    tries = 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not transient
            status, code = _http_error(exc)
            if status in RETRYABLE_STATUS and tries < attempts and not own_retries:
                wait = _retry_after_s(exc)
                if wait is not None and wait > LONGEST_RETRY_AFTER_S:
                    raise SourceUnavailable(f"{what}: the Hub answered HTTP {status} and asks to wait {wait:.0f} s "
                                            "(Retry-After); start the run again later") from None
                sleep(base_delay_s * 2 ** (tries - 1) if wait is None else wait)
                continue
            if _is_network_error(exc):
                if tries < unreachable_attempts and not own_retries:
                    sleep(0.5 * tries)
                    continue
                raise SourceUnavailable(
                    f"{what}: the Hugging Face Hub is unreachable ({type(exc).__name__}: {exc}). {offline_fix}"
                ) from None
            if status is not None:
                hint = ("; check HF_TOKEN, in the environment of the process that starts the run (or `hf auth "
                        "login` there), for gated or private datasets") if status in (401, 403) else ""
                code = f" {code}" if code else ""
                raise SourceUnavailable(f"{what}: the Hub answered HTTP {status}{code}{hint}") from None
            raise


def _retry_after_s(exc: BaseException) -> float | None:
    """The seconds a failed answer's `Retry-After` header asks for (delay-seconds or an HTTP date)."""
    for error in (exc, exc.__cause__):
        headers = getattr(getattr(error, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers is not None else None
        if value is None:
            continue
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None


def hf_filesystem(mirror: str | None = None, token: str | None = None, endpoint: str | None = None):
    """hf:// as an fsspec filesystem: the Hub at `endpoint` (None: this process's HF_ENDPOINT or
    huggingface.co), or a local mirror laid out the same way."""
    if mirror:
        from fsspec.implementations.dirfs import DirFileSystem
        from fsspec.implementations.local import LocalFileSystem

        return DirFileSystem(path=os.path.abspath(os.path.expanduser(mirror)), fs=LocalFileSystem())
    from huggingface_hub import HfFileSystem

    return HfFileSystem(token=token, endpoint=endpoint)


def resolve_files(spec: SourceSpec, endpoint: str | None = None) -> SourceFiles:
    """The source's files, sorted; a Hub source's listed on the Hub at `endpoint` (the job's
    data.hf_endpoint; None: this process's default). Raises SourceUnavailable naming the source."""
    if spec.path is not None and is_uri(spec.path):
        return _resolve_uri_files(spec)
    if spec.path is not None:
        paths = sorted(glob.glob(os.path.expanduser(spec.path)))
        if not paths:
            raise SourceUnavailable(f"source {spec.name}: path {spec.path!r} matches no file; {_glob_fix(spec)}")
        _check_format(spec, paths)
        return SourceFiles(spec.name, "local", tuple(os.path.abspath(p) for p in paths), spec.format,
                           sizes=tuple(os.path.getsize(p) for p in paths))
    endpoint = None if spec.hf_mirror else endpoint  # a mirror is a folder: no Hub to ask
    what = f"source {spec.name} (hf://{hub_root(spec)}{_on_hub(endpoint)})"
    if hub_offline() and not spec.hf_mirror:
        raise offline_refusal(what, "asked for the source's files")
    token = hf_token()
    fs = hf_filesystem(spec.hf_mirror, token, endpoint)
    root = hub_root(spec)
    if not spec.hf_mirror:  # the repo's info, which HfFileSystem asks once and keeps, has no retries of its own
        with_retries(lambda: fs.resolve_path(root), what)
    try:
        card = with_retries(lambda: _read_card(fs, root), what)
        if spec.hf_config and not card.get("configs") and not with_retries(
                lambda: fs.isdir(f"{root}/{spec.hf_config}"), what, own_retries=True):
            # A card without configs makes hf_config a folder (the parquet copy's one per config):
            # a misspelt one is named as such, not as a dataset without files of the format.
            folders = with_retries(lambda: sorted(e["name"].rsplit("/", 1)[-1] for e in fs.ls(root, detail=True)
                                                  if e.get("type") == "directory"), what, own_retries=True)
            raise LayoutError(f"config {spec.hf_config!r} is not a folder of the dataset, whose card names no configs "
                              f"(its folders: {', '.join(folders) or 'none'}); "
                              f"fix: sources.{spec.name}.hf_config, one of them")
        layout = split_patterns(card, spec.hf_config, spec.split, spec.name,
                                lambda base: with_retries(lambda: _data_patterns(spec, token, endpoint, base), what,
                                                          own_retries=True))
    except LayoutError as e:
        raise SourceUnavailable(f"{what}: {e}") from None
    found: dict[str, dict] = {}  # path -> its listing entry (name, size, type)
    for pattern in layout.patterns:
        listed = with_retries(lambda p=f"{root}/{pattern}": fs.glob(p, detail=True), what, own_retries=True)
        found.update((p, info) for p, info in listed.items()
                     if info.get("type") != "directory" and is_data_file(p.removeprefix(root + "/"), pattern))
    files = of_format(found, spec.format)
    if files:
        try:
            check_one_config(hub_relative(spec, files), layout, spec.hf_config, spec.split, spec.name)
        except LayoutError as e:
            raise SourceUnavailable(f"{what}: {e}") from None
        return SourceFiles(spec.name, "hf", tuple(files), spec.format, mirror=spec.hf_mirror,
                           sizes=_listed_sizes(found, files), endpoint=endpoint)
    others = data_file_kinds(found)
    found_note = f"; found only {', '.join(sorted(others))} files" if others else ""
    readable = [fmt for fmt, suffixes in FORMAT_SUFFIXES.items() if any(o in suffixes for o in others)]
    fix = (f"fix: sources.{spec.name}.format: {readable[0]}" if readable else
           f"this reader takes parquet, or jsonl with sources.{spec.name}.format: jsonl; a dataset in other files "
           f"has a parquet copy on the Hub (sources.{spec.name}.revision: refs/convert/parquet, with "
           f"sources.{spec.name}.hf_config naming the config: its folder there)")
    raise SourceUnavailable(f"{what}: no {spec.format} files for config {spec.hf_config or 'default'!r}, split "
                            f"{spec.split!r} in {layout.origin} (looked at {', '.join(layout.patterns)}){found_note}; "
                            f"{fix}")


def _data_patterns(spec: SourceSpec, token: str | None, endpoint: str | None, base: str) -> dict[str, list[str]]:
    """`datasets`' get_data_patterns for a folder of the source's dataset ('' for its root): on
    the mirror, or over hf:// on the Hub at `endpoint` with `token`."""
    from datasets import DownloadConfig
    from datasets.data_files import get_data_patterns

    root = hub_root(spec)
    if spec.hf_mirror:
        folder = os.path.join(os.path.abspath(os.path.expanduser(spec.hf_mirror)), root, base)
        return get_data_patterns(folder.rstrip("/"))
    from huggingface_hub import constants

    options = {"hf": {"token": token, "endpoint": endpoint or constants.ENDPOINT}}
    return get_data_patterns(f"hf://{root}/{base}".rstrip("/"),
                             DownloadConfig(token=token, storage_options=options))


def _check_format(spec: SourceSpec, paths: list[str]) -> None:
    other = named_as_other_format(paths, spec.format)
    if other:
        raise SourceUnavailable(f"source {spec.name}: path {spec.path!r} matches {len(paths)} {other} file(s), read "
                                f"as {spec.format}; fix: sources.{spec.name}.format: {other}")


def _glob_fix(spec: SourceSpec) -> str:
    return f"fix: sources.{spec.name}.path, a glob that matches the source's files"


def _resolve_uri_files(spec: SourceSpec) -> SourceFiles:
    """A glob at a storage URI (s3://bucket/corpus/*.parquet), listed through pyarrow.fs."""
    try:
        fs, pattern = fsspec_filesystem(spec.path)
        found = fs.glob(pattern, detail=True)
    except (StorageError, OSError) as e:
        raise SourceUnavailable(f"source {spec.name}: path {spec.path} cannot be listed ({e}); check the bucket, "
                                "its endpoint and this machine's credentials") from None
    paths = sorted(p for p, info in found.items() if info.get("type") == "file")
    if not paths:
        raise SourceUnavailable(f"source {spec.name}: path {spec.path!r} matches no file; {_glob_fix(spec)}")
    _check_format(spec, paths)
    return SourceFiles(spec.name, "uri", tuple(paths), spec.format, uri=spec.path, sizes=_listed_sizes(found, paths))


FINGERPRINT_SPAN_BYTES = 64 * 1024
PARQUET_FOOTER_MAX_BYTES = 16 * 1024 * 1024


def content_fingerprints(files: SourceFiles) -> tuple[str, ...]:
    """Per file, a short hash of its first and last 64 KiB (the whole of a small file; the whole
    footer of a parquet file whose footer is longer): with the size, what tells a file rewritten
    since a run read it from that file, without reading the corpus. '' for files on the Hub, whose
    content the run's pinned commit fixes. Raises SourceUnavailable naming a file it cannot read."""
    if files.kind == "hf" and not files.mirror:
        return ("",) * len(files.paths)
    if files.kind == "local":
        opener = functools.partial(open, mode="rb")
    else:
        fs = hf_filesystem(files.mirror) if files.kind == "hf" else fsspec_filesystem(files.uri)[0]
        opener = functools.partial(fs.open, mode="rb")

    def fingerprint(path: str) -> str:
        try:
            with opener(path) as f:
                return _fingerprint(f)
        except OSError as e:
            raise SourceUnavailable(f"source {files.source}: {path} cannot be read ({e})") from None

    return tuple(at_once(fingerprint, files.paths))  # a bucket answers each read in tens of ms


def _fingerprint(f) -> str:
    size = f.seek(0, os.SEEK_END)
    tail_bytes = min(size, FINGERPRINT_SPAN_BYTES)
    if size >= 12:
        f.seek(size - 8)
        trailer = f.read(8)  # a parquet file ends with its footer's length and b"PAR1"
        if trailer[4:] == b"PAR1":
            tail_bytes = min(size, max(tail_bytes, int.from_bytes(trailer[:4], "little") + 8),
                             PARQUET_FOOTER_MAX_BYTES)
    f.seek(0)
    digest = hashlib.sha256(f.read(min(size, FINGERPRINT_SPAN_BYTES)))
    f.seek(size - tail_bytes)
    digest.update(f.read(tail_bytes))
    return digest.hexdigest()[:16]


def _listed_sizes(found: dict[str, dict], paths: list[str]) -> tuple[int, ...]:
    """Each path's size in bytes from an fsspec `glob(detail=True)` listing (0 where it gives none)."""
    return tuple(int(found[p].get("size") or 0) for p in paths)


DEFAULT_ENDPOINT = "https://huggingface.co"


def _on_hub(endpoint: str | None) -> str:
    """' on <endpoint>' for a Hub other than huggingface.co, for messages."""
    return f" on {endpoint}" if endpoint and endpoint.rstrip("/") != DEFAULT_ENDPOINT else ""


def hub_relative(spec: SourceSpec, paths) -> list[str]:
    """A Hub source's listed paths relative to the dataset's root (`main/train/0000.parquet`)."""
    prefix = hub_root(spec) + "/"
    return [p.removeprefix(prefix) for p in paths]


def hub_root(spec: SourceSpec) -> str:
    """The dataset's root under hf://, at the source's revision (HfFileSystem's `repo@revision`,
    a branch's slashes encoded). A mirror is one snapshot, laid out without a revision."""
    root = f"datasets/{spec.hf}"
    if spec.revision and not spec.hf_mirror:
        root += "@" + urllib.parse.quote(spec.revision, safe="")
    return root


def pin_revision(spec: SourceSpec, endpoint: str | None = None) -> str | None:
    """The commit the Hub at `endpoint` serves for the source's revision (its default branch when
    unset), or None for a mirror; raises SourceUnavailable naming the source when it cannot say."""
    if spec.hf is None or spec.hf_mirror:
        return None
    what = f"source {spec.name} (hf://{hub_root(spec)}{_on_hub(endpoint)})"
    if hub_offline():
        raise offline_refusal(what, "asked which commit to read")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=hf_token())
    info = with_retries(lambda: api.dataset_info(spec.hf, revision=spec.revision), what)
    return info.sha


OFFLINE_TOKENIZER_FIX = ("Fix: data.tokenizer as a local tokenizer.json, or `gpt2` (offline); a Hub tokenizer at a "
                         "commit (org/name@<sha>) also loads offline (HF_HUB_OFFLINE=1) once it is in this machine's "
                         "Hugging Face cache.")


def pin_model_revision(repo: str, revision: str | None, what: str, endpoint: str | None = None) -> str:
    """The commit the Hub serves for a model repo's revision (its default branch when unset), as
    pin_revision does for a dataset; `what` names the setting in any error."""
    if hub_offline():
        raise SourceUnavailable(f"{what}: HF_HUB_OFFLINE is set, so the Hub is not asked which commit to read. "
                                + OFFLINE_TOKENIZER_FIX)
    from huggingface_hub import HfApi

    info = with_retries(lambda: HfApi(endpoint=endpoint, token=hf_token()).model_info(repo, revision=revision), what,
                        offline_fix=OFFLINE_TOKENIZER_FIX)
    return info.sha


def download_hub_file(repo: str, filename: str, revision: str | None, what: str, endpoint: str | None = None) -> str:
    """The local path of one file of a model repo at `revision`, through the Hugging Face cache
    (under HF_HUB_OFFLINE, a cached copy or a LocalEntryNotFoundError), with the sources' retries."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download() -> str:
        try:
            return hf_hub_download(repo, filename, revision=revision, token=hf_token(), endpoint=endpoint)
        except LocalEntryNotFoundError as e:
            # Not cached, and the Hub did not serve it: its answer (a 404, a 401, no network) is
            # what says why, not "not in the cache", so it is what with_retries classifies.
            if e.__cause__ is not None:
                raise e.__cause__ from None
            raise

    return with_retries(download, what, own_retries=True, offline_fix=OFFLINE_TOKENIZER_FIX)


def _read_card(fs, root: str) -> dict:
    """The dataset card's front matter ({} without a card), parsed by huggingface_hub."""
    try:
        with fs.open(f"{root}/README.md", "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        if _http_error(e)[0] is not None:
            raise  # the repo or its revision, not the card, is missing: the Hub's answer says which
        return {}
    return card_front_matter(text, f"{root}/README.md")


class Redacted:
    """Holds a secret (HF_TOKEN) so that it travels to read tasks but never prints."""

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>" if self.value else "None"
