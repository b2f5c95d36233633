"""A source's file list as a run saw it, and how another listing differs (pure, but for
`manifest_now`, which reads the files' fingerprints).

The cursors a checkpoint holds are positions in a source's sorted file list (a file's index,
then a row in it). Resumed over another list, they point at other documents: files added to a
Hub dataset, or a local glob that now matches one more file, shift every index after them, and
the run would skip or repeat documents with nothing saying so. So each checkpoint records the
list (names, sizes and a fingerprint of each file's content: hub.content_fingerprints), and a
resume, or a restarted coordinator, compares it with the files it finds. Names are relative to
the source's own root, so a corpus that moved compares equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from yxanul_ray.hub import SourceFiles, at_once, content_fingerprints, hub_root, resolve_files
from yxanul_ray.specs import JobSpec, SourceSpec


def file_manifest(spec: SourceSpec, files: SourceFiles, fingerprints: tuple[str, ...] = ()) -> dict:
    """{"root": where the files were (for messages), "files": [[name, size in bytes, fingerprint],
    ...]}, in the source's sorted order, names relative to the dataset's root on the Hub (or in a
    mirror, which lists the same names) or to the local files' common folder. The fingerprint
    (hub.content_fingerprints) is left out where there is none."""
    root = hub_root(spec) if files.kind == "hf" else _common_dir(files.paths)
    prefix = root.rstrip("/") + "/"
    names = [p[len(prefix):] if p.startswith(prefix) else p for p in files.paths]
    fingerprints = fingerprints or ("",) * len(names)
    return {"root": root, "files": [[n, s, *([fp] if fp else [])]
                                    for n, s, fp in zip(names, files.sizes, fingerprints, strict=True)]}


def manifest_now(spec: SourceSpec, files: SourceFiles) -> dict:
    """The source's file list with each file's fingerprint read now: what a checkpoint records
    (the coordinator) and what a resume compares with it (the driver)."""
    return file_manifest(spec, files, content_fingerprints(files))


@dataclass(frozen=True)
class SourceListing:
    """Every source's files and their manifests, as one listing found them."""

    files: dict[str, SourceFiles]
    manifests: dict[str, dict]
    """Per source, manifest_now's: what a checkpoint records, and a resume compares."""


def list_sources(job: JobSpec) -> SourceListing:
    """List every source of `job` and read its files' fingerprints. The driver does it before any
    cluster work, so a source that does not list (a glob at a URI that matches nothing, a Hub
    config or split that is not there, a bucket without credentials) is one error there, not a
    coordinator that dies in Ray and a worker group retried until run.max_failures is spent. The
    coordinator takes the driver's listing (and lists again only after a restart). Raises
    SourceUnavailable naming the source."""
    def listed(spec: SourceSpec) -> tuple[SourceFiles, dict]:
        files = resolve_files(spec, job.data.hf_endpoint)
        return files, manifest_now(spec, files)

    # The sources are listed at once (a card, tree pages each); the first error in the config's
    # order is raised.
    both = dict(zip(job.sources, at_once(listed, job.sources.values())))
    return SourceListing({n: f for n, (f, _) in both.items()}, {n: m for n, (_, m) in both.items()})


def _common_dir(paths: tuple[str, ...]) -> str:
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""


def manifest_difference(saved: dict, now: dict) -> str | None:
    """None if both list the same files with the same sizes and, where both record one, the
    same fingerprints; else what differs, briefly."""
    was, new = [tuple(f[:2]) for f in saved["files"]], [tuple(f[:2]) for f in now["files"]]
    if was == new:
        for (name, size, *fp_then), (_, _, *fp_now) in zip(saved["files"], now["files"]):
            if fp_then and fp_now and fp_then != fp_now:
                return (f"{name!r} has the size it had, {size:,} bytes, but other content "
                        f"({saved['root']} then, {now['root']} now)")
        return None
    where = f"{saved['root']} then, {now['root']} now"
    if len(was) != len(new):
        only_then = sorted({n for n, _ in was} - {n for n, _ in new})
        only_now = sorted({n for n, _ in new} - {n for n, _ in was})
        parts = [f"{len(was)} files then, {len(new)} now"]
        if only_now:
            parts.append(f"new: {_few(only_now)}")
        if only_then:
            parts.append(f"gone: {_few(only_then)}")
        return "; ".join(parts) + f" ({where})"
    for i, ((name_then, size_then), (name_now, size_now)) in enumerate(zip(was, new)):
        if name_then != name_now:
            return f"file {i + 1} of {len(was)} was {name_then!r}, is {name_now!r} ({where})"
        if size_then != size_now:
            return f"{name_then!r} was {size_then:,} bytes, is {size_now:,} ({where})"
    return None  # unreachable: the lists differ in some entry


def manifest_differences(saved: dict[str, dict], now: dict[str, dict]) -> dict[str, str]:
    """Per source in both (source -> manifest), what differs; sources whose files agree are left out."""
    diffs = {name: manifest_difference(saved[name], now[name]) for name in saved if name in now}
    return {name: d for name, d in diffs.items() if d}


def _few(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more
