"""Where a run's checkpoints and artifacts live: a directory, or a URI Ray Train writes through
pyarrow.fs (s3://bucket/prefix, gs://, abfs://, hdfs://, file://). A local source's `path` may
be such a URI too (a glob in it), read through the same filesystems.

On a cluster of several nodes it must be storage every node reaches: a bucket, or a directory
on a filesystem mounted alike on every node (NFS). Ray Train checks that when the run starts;
a local directory on the head is not reachable from the GPU nodes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator


class StorageError(RuntimeError):
    """Storage at a URI that cannot be opened or read; the message names the URI."""


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_storage(path: str) -> str:
    """A URI as given; a directory made absolute (the workers' working directory differs)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def storage_join(base: str, *parts: str) -> str:
    if not is_uri(base):
        return os.path.join(base, *parts)
    head, sep, query = base.partition("?")  # a URI's options (s3://b/p?endpoint_override=...) stay last
    return "/".join([head.rstrip("/"), *parts]) + sep + query


def storage_split(path: str) -> tuple[str, str]:
    """(the directory a path is in, its name), for a directory's path or a URI (its options kept
    on the directory, as storage_join puts them)."""
    if not is_uri(path):
        path = os.path.normpath(path)
        return os.path.dirname(path), os.path.basename(path)
    head, sep, query = path.partition("?")
    parent, _, name = head.rstrip("/").rpartition("/")
    return parent + sep + query, name


def open_storage(uri: str):
    """(pyarrow filesystem, path in it) for a URI; StorageError if pyarrow cannot open it (an
    unknown scheme or option, or a bucket whose region cannot be found)."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # ArrowInvalid is a ValueError
        raise StorageError(f"{uri}: not storage this machine can open ({e})") from None


def read_text(path: str) -> str:
    """A small file's text, from a directory or a URI; FileNotFoundError if it is not there."""
    if not is_uri(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    fs, fs_path = open_storage(path)
    import pyarrow.fs

    try:
        if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(fs_path) as f:
                return f.read().decode("utf-8")
    except OSError as e:
        raise StorageError(f"{path}: cannot be read ({e}); check the bucket, its endpoint and this machine's "
                           "credentials") from None
    raise FileNotFoundError(2, "No such file", path.partition("?")[0])


@contextlib.contextmanager
def open_random_access(path: str):
    """A file (in a directory or at a URI) open for seeking and reading: for reading the end of a
    large file (a zip archive's directory) without the rest of it."""
    if not is_uri(path):
        with open(path, "rb") as f:
            yield f
        return
    fs, fs_path = open_storage(path)
    try:
        f = fs.open_input_file(fs_path)
    except OSError as e:
        raise StorageError(f"{path}: cannot be read ({e}); check the bucket, its endpoint and this machine's "
                           "credentials") from None
    with f:
        yield f


@functools.lru_cache(maxsize=32)
def fsspec_filesystem(uri: str):
    """(fsspec view of the pyarrow filesystem a URI names, the path in it): glob and open for a
    source's files at a URI, as HfFileSystem gives them for the Hub. Cached per process: a
    source's reader opens every file through it, and opening an S3 filesystem without a region
    asks the bucket for one (fsspec caches HfFileSystem the same way)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    fs, path = open_storage(uri)
    return ArrowFSWrapper(fs), path


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A directory's local path: itself, or a URI's contents downloaded to a temporary one."""
    if not is_uri(path):
        yield path
        return
    import pyarrow.fs

    fs, fs_path = open_storage(path)
    with tempfile.TemporaryDirectory(prefix="yxanul-download-") as tmp:
        pyarrow.fs.copy_files(fs_path, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield tmp


def subdirectories(path: str) -> list[str]:
    """The names of the directories directly under `path` (a directory or a URI), sorted; [] if
    `path` is not there."""
    return _names_under(path, directories=True)


def files_under(path: str) -> list[str]:
    """The names of the files directly under `path` (a directory or a URI), sorted; [] if `path`
    is not there."""
    return _names_under(path, directories=False)


def _names_under(path: str, directories: bool) -> list[str]:
    if not is_uri(path):
        if not os.path.isdir(path):
            return []
        return sorted(e.name for e in os.scandir(path) if (e.is_dir() if directories else e.is_file()))
    import pyarrow.fs

    fs, fs_path = open_storage(path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"{path}: cannot be listed ({e}); check the bucket, its endpoint and this machine's "
                           "credentials") from None
    wanted = pyarrow.fs.FileType.Directory if directories else pyarrow.fs.FileType.File
    return sorted(i.base_name for i in infos if i.type == wanted)


def upload(local_path: str, uri: str) -> None:
    """Copy a local file or directory to `uri` (a directory's files keep their relative paths)."""
    import pyarrow.fs

    fs, fs_path = open_storage(uri)
    if os.path.isdir(local_path):
        fs.create_dir(fs_path, recursive=True)
    else:
        fs.create_dir(os.path.dirname(fs_path), recursive=True)
    pyarrow.fs.copy_files(local_path, fs_path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)


def artifacts_dir(run_dir: str) -> str:
    """Where rank 0 writes TensorBoard and the loss plot: the run's directory, or for a URI a
    local one, copied to the URI at each checkpoint and at the end (TensorBoard appends to its
    files, which object stores cannot)."""
    if not is_uri(run_dir):
        return run_dir
    name = run_dir.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return os.path.join(tempfile.gettempdir(), "yxanul-artifacts", name)
