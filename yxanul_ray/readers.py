"""A source's files into documents: the read step of its pipeline, with no Ray in it.

One read call per file (parquet row group by row group, jsonl line by line), from a cursor on,
across wrap epochs. Rows carry their position (epoch, file_pos, row, piece) and, for a malformed
row, the kind of defect instead of text, so packing can count it and cursors can name it. Also
here: the held-out documents, the check of a source's text field, and how many file reads a
stage plans.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import Redacted, SourceFiles, hf_filesystem, with_retries
from yxanul_ray.hub_layout import JSONL_CODECS
from yxanul_ray.storage import fsspec_filesystem

log = logging.getLogger(__name__)

END_OF_DATA = "end_of_data"  # marker row after the last wrap epoch: the source is exhausted
UNREADABLE_FILE = "unreadable_file"  # one row for a file, or its rest, that cannot be decoded
MAX_WRAP_EPOCHS = 64

DOC_SCHEMA = pa.schema([
    ("epoch", pa.int32()), ("file_pos", pa.int32()), ("row", pa.int64()), ("piece", pa.int32()),
    ("last_piece", pa.bool_()), ("bad", pa.string()), ("text", pa.large_string()),
])


@dataclass(frozen=True)
class ReadSpec:
    files: SourceFiles
    text_field: str
    max_doc_chars: int
    holdout_docs: int
    """Documents at the end of the last file (sorted order) kept out of training for validation."""
    seed: int


def split_text(value, max_chars: int) -> tuple[list[str], str]:
    """(pieces, defect kind or '')."""
    if value is None:
        return [], "null"
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return [], "invalid_utf8"
    if not isinstance(value, str):
        return [], "non_string"
    if not value.strip():
        return [], "empty"
    if len(value) <= max_chars:
        return [value], ""
    return [value[i:i + max_chars] for i in range(0, len(value), max_chars)], "split_long_doc"


class _DocBatch:
    """Accumulates document rows and hands them out as Arrow tables of bounded size."""

    def __init__(self, epoch: int, file_pos: int, max_chars: int):
        self.epoch, self.file_pos, self.max_chars = epoch, file_pos, max_chars
        self.cols: dict[str, list] = {n: [] for n in DOC_SCHEMA.names}
        self.chars = 0

    def add(self, row: int, value, start_piece: int = 0) -> None:
        pieces, bad = split_text(value, self.max_chars)
        if not pieces:
            self._append(row, 0, True, bad, "")
            return
        if bad and start_piece == 0:  # a split document: counted once, then its pieces follow
            self._append(row, -1, False, bad, "")
        for i, piece in enumerate(pieces):
            if i >= start_piece:
                self._append(row, i, i == len(pieces) - 1, "", piece)

    def add_bad(self, row: int, kind: str) -> None:
        self._append(row, 0, True, kind, "")

    def _append(self, row, piece, last, bad, text) -> None:
        for name, v in zip(DOC_SCHEMA.names, (self.epoch, self.file_pos, row, piece, last, bad, text)):
            self.cols[name].append(v)
        self.chars += len(text)

    def flush(self) -> pa.Table | None:
        if not self.cols["row"]:
            return None
        table = pa.table(self.cols, schema=DOC_SCHEMA)
        self.cols = {n: [] for n in DOC_SCHEMA.names}
        self.chars = 0
        return table


def open_file(files: SourceFiles, path: str, token: Redacted):
    if files.kind == "local":
        return open(path, "rb")
    if files.kind == "uri":
        fs, _ = fsspec_filesystem(files.uri)
        return fs.open(path, "rb")
    fs = hf_filesystem(files.mirror, token.value, files.endpoint)
    return with_retries(lambda: fs.open(path, "rb", block_size=8 << 20), f"source {files.source} ({path})")


def read_file_docs(spec: ReadSpec, token: Redacted, epoch: int, file_pos: int, file_index: int,
                   start: SourceCursor | None, end_marker: bool) -> Iterator[pa.Table]:
    """Yield document rows of one file (from `start` when the cursor is inside it)."""
    files = spec.files
    path = files.paths[file_index]
    holdout = spec.holdout_docs if file_index == len(files.paths) - 1 else 0
    first_row = start.row if start else 0
    first_piece = start.piece if start else 0
    batch = _DocBatch(epoch, file_pos, spec.max_doc_chars)
    with open_file(files, path, token) as f:
        if files.format == "parquet":
            rows = _parquet_rows(f, path, spec, first_row, holdout, files.source, local=files.kind == "local")
        else:
            rows = _jsonl_rows(f, path, spec, first_row, holdout, files.source, local=files.kind == "local")
        for row, value, bad in rows:
            if bad:
                batch.add_bad(row, bad)
            else:
                batch.add(row, value, first_piece if row == first_row else 0)
            if batch.chars >= 1 << 20 or len(batch.cols["row"]) >= 1024:
                yield batch.flush()
    if end_marker:
        batch.add_bad(-1, END_OF_DATA)
    table = batch.flush()
    if table is not None:
        yield table


def _parquet_rows(f, path: str, spec: ReadSpec, first_row: int, holdout: int, source: str, local: bool):
    """(row, text, defect) of a parquet file from `first_row`. A file that is not parquet, or
    whose data cannot be decoded, yields one UNREADABLE_FILE row where reading stopped, and the
    run goes on to the next file (a logged warning names it): a corrupt shard must not end a
    run, and skipping it is the same on every read, so cursors and resumes stay exact. Decoding
    errors are plain OSErrors in pyarrow, as network errors are, so only a local file's count
    as unreadable; a remote file's fail the read as before (Ray Data retries I/O errors)."""
    import pyarrow.parquet as pq

    corrupt = (pa.ArrowInvalid, OSError) if local else (pa.ArrowInvalid,)
    try:
        pf = pq.ParquetFile(f, buffer_size=PARQUET_READ_BUFFER_BYTES, pre_buffer=False)
    except corrupt as e:
        log.warning("source %s: skipped %s from row %d: not a readable parquet file (%s)", source, path, first_row, e)
        yield first_row, None, UNREADABLE_FILE
        return
    _check_text_field(pf, spec.text_field, source, path)
    total = pf.metadata.num_rows
    stop = max(0, total - holdout)
    offset = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n <= first_row:  # row groups before the cursor are never fetched
            offset += n
            continue
        if offset >= stop:
            break
        row = offset
        try:
            for batch in _text_batches(pf, spec.text_field, g):
                for value in batch.column(0).to_pylist():
                    if first_row <= row < stop:
                        yield row, value, ""
                    row += 1
                if row >= stop:
                    break
        except corrupt as e:
            skipped_from = max(row, first_row)
            log.warning("source %s: skipped rows %d-%d of %s: row group %d cannot be decoded (%s)", source,
                        skipped_from, stop - 1, path, g, e)
            yield skipped_from, None, UNREADABLE_FILE
            return
        offset += n


PARQUET_BATCH_ROWS = 1024
"""Rows decoded at a time. A row group can be a whole file (pandas writes up to 1M rows in one):
its text column read at once peaked at 3.2 GiB RSS for a 771 MB file."""
PARQUET_READ_BUFFER_BYTES = 8 << 20
"""Column chunks stream through a buffer of this size instead of being read whole (with
pre_buffer off: pyarrow's default pre-buffering read that file's whole chunk, 859 MiB RSS)."""


def _text_batches(pf, column: str, *row_groups: int):
    """The `column` of `row_groups` in record batches of PARQUET_BATCH_ROWS rows."""
    return pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=list(row_groups), columns=[column])


def _check_text_field(pf, text_field: str, source: str, path: str) -> None:
    """A file without the configured text column is a config error, not a corrupt file."""
    if text_field not in pf.schema_arrow.names:
        raise KeyError(f"source {source}: {path} has no column {text_field!r} (columns: "
                       f"{', '.join(pf.schema_arrow.names)}); set sources.{source}.text_field")


COMPRESSED_READ_BYTES = 64 << 10
"""Decompressed bytes asked for at a time. A stream that stops decoding (a file cut short) loses
the whole read it fails in, so this bounds the readable text lost before the cut; smaller reads
decode no slower."""


def jsonl_lines(f, path: str) -> Iterator[bytes]:
    """A jsonl file's rows, streamed (a shard can be gigabytes): its lines without their newline;
    text after the last newline is a row unless it is blank. Training and the held-out documents
    index the same rows, so the holdout is exactly the rows training skips."""
    codec = JSONL_CODECS.get(path[path.rfind("."):])
    if codec:
        f = pa.CompressedInputStream(pa.PythonFile(f, mode="r"), codec)
    for line in io.BufferedReader(f, buffer_size=COMPRESSED_READ_BYTES if codec else 1 << 20):
        if line.endswith(b"\n"):
            yield line[:-1]
        elif line.strip():
            yield line


def _jsonl_row(raw: bytes, text_field: str) -> tuple[object, str]:
    """(the row's text, '') or (None, the defect it is counted under)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    except json.JSONDecodeError:
        return None, "malformed_json"
    if not isinstance(obj, dict) or text_field not in obj:
        return None, "missing_field"
    return obj[text_field], ""


def _jsonl_rows(f, path: str, spec: ReadSpec, first_row: int, holdout: int, source: str, local: bool):
    """(row, text, defect) of a jsonl file from `first_row`, less its last `holdout` rows: a row
    is passed on once `holdout` more have been read, so the file is read once and never whole.
    A local compressed file that stops decoding (cut short, corrupt) yields one UNREADABLE_FILE
    row where reading stopped, as a corrupt parquet file does; a remote one fails the read."""
    pending: collections.deque[tuple[int, bytes]] = collections.deque()
    row = -1
    try:
        for row, raw in enumerate(jsonl_lines(f, path)):
            if holdout:
                pending.append((row, raw))
                if len(pending) <= holdout:
                    continue
                row, raw = pending.popleft()
            if row >= first_row:
                yield row, *_jsonl_row(raw, spec.text_field)
    except (pa.ArrowInvalid, OSError) as e:
        if not local:
            raise
        skipped_from = max(first_row, pending[0][0] if pending else row + 1)
        log.warning("source %s: skipped %s from row %d: it cannot be decompressed (%s)", source, path, skipped_from, e)
        yield skipped_from, None, UNREADABLE_FILE


FIELD_CHECK_JSONL_ROWS = 64
"""A jsonl file's first rows whose keys the start-up check reads (text_field_problem)."""


def text_field_problem(spec: ReadSpec, token: Redacted) -> str | None:
    """Why the source's `text_field` is not a field of its first file, for the driver to refuse
    the config before any cluster work; None where it is one. A parquet file's columns are in its
    footer, the only part read; a jsonl file's are the keys of its first documents. A first file
    that does not read as its format gives None: the read tasks count and skip such a file."""
    files = spec.files
    path = files.paths[0]
    try:
        with open_file(files, path, token) as f:
            if files.format == "parquet":
                import pyarrow.parquet as pq

                names, what = pq.ParquetFile(f, pre_buffer=False).schema_arrow.names, "columns"
            else:
                names, documents = _first_jsonl_keys(f, path)
                what = f"keys of its first {documents} documents"
    except (pa.ArrowInvalid, OSError):
        # Not parquet, cut short, unreadable, or a network error mid-read: the read tasks skip
        # and count such a file, or retry the read, and say which. (A refusal from the Hub is a
        # SourceUnavailable, said as it is.)
        return None
    if not names or spec.text_field in names:
        return None
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    return f"{spec.text_field!r} is not among the {what} in {path} ({shown})"


def _first_jsonl_keys(f, path: str) -> tuple[list[str], int]:
    """(the keys of a jsonl file's first documents, in order, how many documents): its first
    FIELD_CHECK_JSONL_ROWS rows, past malformed ones (counted when the file is read)."""
    keys: dict[str, None] = {}
    documents = 0
    try:
        for raw in itertools.islice(jsonl_lines(f, path), FIELD_CHECK_JSONL_ROWS):
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                documents += 1
                keys.update(dict.fromkeys(obj))
    except pa.ArrowInvalid:  # a compressed file that stops decoding: the documents before it
        pass
    return list(keys), documents


def read_holdout_docs(spec: ReadSpec) -> list[str]:
    """The held-out validation documents of a source (the last `holdout_docs` of its last file)."""
    files, token = spec.files, Redacted(None)
    if files.kind == "hf":
        from yxanul_ray.hub import hf_token

        token = Redacted(hf_token())
    path = files.paths[-1]
    out: list[str] = []
    with open_file(files, path, token) as f:
        if files.format == "parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(f, buffer_size=PARQUET_READ_BUFFER_BYTES, pre_buffer=False)
                _check_text_field(pf, spec.text_field, files.source, path)
                values = _last_values(pf, spec.text_field, spec.holdout_docs)
            except (pa.ArrowInvalid, OSError) as e:
                # Training skips such a file (_parquet_rows); validation has no other documents.
                raise _unreadable_holdout(spec, path, "be read as parquet", e) from None
        else:
            try:
                last_lines = collections.deque(jsonl_lines(f, path), maxlen=spec.holdout_docs)
            except (pa.ArrowInvalid, OSError) as e:
                raise _unreadable_holdout(spec, path, "be decompressed", e) from None
            values = [_jsonl_row(raw, spec.text_field)[0] for raw in last_lines]
    for value in values:
        pieces, _ = split_text(value, spec.max_doc_chars)
        if pieces:
            out.append("".join(pieces))
    return out


def _unreadable_holdout(spec: ReadSpec, path: str, cannot: str, error: Exception) -> ValueError:
    source = spec.files.source
    return ValueError(f"source {source}: its held-out validation documents are the last {spec.holdout_docs} of its "
                      f"last file, {path}, which cannot {cannot} ({error}); fix: replace that file, or set "
                      f"sources.{source}.validation_docs to 0")


def _last_values(pf, column: str, n: int) -> list:
    """The last `n` values of a parquet file's `column`, reading only the row groups that hold
    them: a Hub shard's text column can be gigabytes, its last row group a few megabytes."""
    groups, rows = [], 0
    for g in reversed(range(pf.num_row_groups)):
        if rows >= n:
            break
        groups.append(g)
        rows += pf.metadata.row_group(g).num_rows
    last = collections.deque(maxlen=n)
    if groups:
        for batch in _text_batches(pf, column, *sorted(groups)):
            last.extend(batch.column(0).to_pylist())
    return list(last)
