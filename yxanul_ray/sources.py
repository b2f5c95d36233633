"""One source's pipeline for one stage as a Ray Dataset: read -> tokenize -> pack.

- Read: a Datasource with one read task per file (parquet read row group by row group, jsonl
  line by line), from the source's cursor on, across wrap epochs. Rows carry their position
  (epoch, file_pos, row, piece) and, for malformed rows, the kind of defect instead of text.
- Tokenize: map_batches as tasks on pooled worker processes; each process loads the tokenizer
  once (a per-stage actor pool would start new processes at every stage boundary).
- Pack: map_batches as one task at a time that hands each block to the run's StagePackers actor
  (packing carries a document's tail into the next row, so it needs the stream in order and one
  holder of state; it is a memcpy, cheap next to tokenizing). It makes exactly `max_rows` rows
  and hands them to the stage's batch assembly in the same actor, which records where the
  stream stopped.

Ray Data runs these with preserve_order=True so the stream order is the file order, which is
what makes cursors and seeded runs reproducible.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from yxanul_ray.cursors import SourceCursor, file_order
from yxanul_ray.hub import SourceFiles, hf_filesystem, with_retries
from yxanul_ray.hub_layout import JSONL_CODECS
from yxanul_ray.packing import Packer
from yxanul_ray.storage import fsspec_filesystem
from yxanul_ray.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

END_OF_DATA = "end_of_data"  # marker row after the last wrap epoch: the source is exhausted
UNREADABLE_FILE = "unreadable_file"  # one row for a file, or its rest, that cannot be decoded
MAX_WRAP_EPOCHS = 64
BLOCK_BYTES = 2 << 20

DOC_SCHEMA = pa.schema([
    ("epoch", pa.int32()), ("file_pos", pa.int32()), ("row", pa.int64()), ("piece", pa.int32()),
    ("last_piece", pa.bool_()), ("bad", pa.string()), ("text", pa.large_string()),
])


class Redacted:
    """Holds a secret (HF_TOKEN) so that it travels to read tasks but never prints."""

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>" if self.value else "None"


# --------------------------------------------------------------------------------------------
# Reading documents
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadSpec:
    files: SourceFiles
    text_field: str
    max_doc_chars: int
    holdout_docs: int
    """Documents at the end of the last file (sorted order) kept out of training for validation."""
    seed: int


def _split_text(value, max_chars: int) -> tuple[list[str], str]:
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
        pieces, bad = _split_text(value, self.max_chars)
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


def _open(files: SourceFiles, path: str, token: Redacted):
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
    with _open(files, path, token) as f:
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
the whole read it fails in, so this bounds the readable text lost before the cut (in the cut-file
test: 1 MiB reads lost 608 of the 4,736 documents gzip decodes there, 64 KiB reads 97). Lines
came as fast: 174 MiB of gzip or zstd jsonl in 0.11 or 0.03 s either way."""


def _jsonl_lines(f, path: str) -> Iterator[bytes]:
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
        for row, raw in enumerate(_jsonl_lines(f, path)):
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
        with _open(files, path, token) as f:
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
        for raw in itertools.islice(_jsonl_lines(f, path), FIELD_CHECK_JSONL_ROWS):
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
    with _open(files, path, token) as f:
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
                last_lines = collections.deque(_jsonl_lines(f, path), maxlen=spec.holdout_docs)
            except (pa.ArrowInvalid, OSError) as e:
                raise _unreadable_holdout(spec, path, "be decompressed", e) from None
            values = [_jsonl_row(raw, spec.text_field)[0] for raw in last_lines]
    for value in values:
        pieces, _ = _split_text(value, spec.max_doc_chars)
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


def one_file(spec: ReadSpec, file_index: int) -> ReadSpec:
    """`spec` narrowed to one of its files, holding the held-out documents only if it is the
    last: what a read task carries. Ray Data puts every planned read task in the object store
    when a stage starts, and with the whole file list in each, 2,410 files (fineweb-edu's default
    config) made 7,230 tasks of 315 KiB: 2.2 GiB a source and stage."""
    files = dataclasses.replace(spec.files, paths=(spec.files.paths[file_index],),
                                sizes=spec.files.sizes[file_index:file_index + 1])
    holdout = spec.holdout_docs if file_index == len(spec.files.paths) - 1 else 0
    return dataclasses.replace(spec, files=files, holdout_docs=holdout)


def stream_files(spec: ReadSpec, start: SourceCursor, reads: int) -> Iterator[tuple[int, int, int]]:
    """(epoch, position in the epoch's order, file index) of the first `reads` files of the
    source's stream from `start`: the cursor's file, the rest of its epoch, then the next
    epochs' orders (file_order)."""
    n = len(spec.files.paths)
    epoch, pos = start.epoch, start.file_pos
    order = file_order(n, epoch, spec.seed, spec.files.source)
    for _ in range(reads):
        if pos == n:
            epoch, pos = epoch + 1, 0
            order = file_order(n, epoch, spec.seed, spec.files.source)
        yield epoch, pos, order[pos]
        pos += 1


def make_datasource(spec: ReadSpec, start: SourceCursor, reads: int):
    """A Ray Data datasource of `reads` read tasks, one file each, in stream order from `start`
    (planned_reads: enough for the stage). The last adds an END_OF_DATA row."""
    from ray.data import Datasource
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    from yxanul_ray.hub import hf_token

    token = Redacted(hf_token() if spec.files.kind == "hf" else None)

    class DocumentDatasource(Datasource):
        """One read task per file, in stream order from the cursor, across wrap epochs if need be."""

        def get_name(self) -> str:
            return f"Read{spec.files.source.capitalize()}Docs"

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            # Runs in the process that executes the Dataset (a split coordinator). A stage that
            # needs fewer files than the read concurrency stops reading early (the limit), which
            # is the point; Ray Data warns about it once per stage and source in the user's log.
            warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for 'Read")
            tasks = []
            plan = list(stream_files(spec, start, reads))
            per_file = {index: one_file(spec, index) for _, _, index in plan}  # the planned files only
            for k, (epoch, pos, index) in enumerate(plan):
                cursor = start if k == 0 else None
                meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                     input_files=(spec.files.paths[index],))
                tasks.append(ReadTask(
                    lambda e=epoch, p=pos, one=per_file[index], c=cursor, m=k == reads - 1:
                        read_file_docs(one, token, e, p, 0, c, m),
                    meta, schema=DOC_SCHEMA,
                ))
            return tasks

    return DocumentDatasource()


# --------------------------------------------------------------------------------------------
# Tokenizing and packing
# --------------------------------------------------------------------------------------------

TOKEN_SCHEMA_FIELDS = ("epoch", "file_pos", "row", "piece", "last_piece", "bad")


TOKENIZE_SLICE_CHARS = 4 << 20
"""Characters per tokenizer call within a batch: its ids come back as Python lists (~36 bytes a
token), so a batch of long documents is encoded a slice at a time. 256 documents of 400k
characters in one call peaked at 2.4 GiB RSS."""


def tokenize_batch(batch: pa.Table, tokenizer: str, slice_chars: int = TOKENIZE_SLICE_CHARS) -> pa.Table:
    """Tokenize a batch of document rows. A plain function, so Ray Data runs it as tasks on
    pooled worker processes (no actor start per stage); `load_tokenizer` caches per process,
    so each worker process loads the tokenizer once. `tokenizer` is what the coordinator read
    at the run's start (tokenizer.run_tokenizer: `gpt2`, or a tokenizer.json's content)."""
    tok = load_tokenizer(tokenizer)
    texts = batch.column("text").to_pylist()
    lengths = np.zeros(len(texts), dtype=np.int64)
    flat_parts = []
    for lo, hi in _char_slices(texts, slice_chars):
        ids = tok.encode_batch(texts[lo:hi])
        lengths[lo:hi] = [len(x) for x in ids]
        flat_parts.append(np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths[lo:hi].sum())))
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, dtype=np.int32)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    cols = {name: batch.column(name) for name in TOKEN_SCHEMA_FIELDS}
    return pa.table({**cols, "tokens": tokens})


def _char_slices(texts: list, slice_chars: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges of `texts` of about `slice_chars` characters each (at least one text)."""
    lo, chars = 0, 0
    for i, text in enumerate(texts):
        chars += len(text) if text else 0
        if chars >= slice_chars:
            yield lo, i + 1
            lo, chars = i + 1, 0
    if lo < len(texts):
        yield lo, len(texts)


class Pack:
    """One (stage, source) stream's packing state: tokenized document blocks in, packed rows out,
    exactly `max_rows` of them. Lives in the run's StagePackers actor; blocks must arrive in
    stream order, which it checks (a reordered stream would silently change the rows)."""

    def __init__(self, *, source: str, source_id: int, seq_len: int, stride: int, eos_id: int, max_rows: int,
                 start: dict, reads: int, skip_rows: int = 0):
        self.source, self.source_id, self.reads = source, source_id, reads
        self.packer = Packer(seq_len, stride, eos_id, max_rows, SourceCursor.from_dict(start), skip_rows)
        self._last_key: tuple[int, int, int, int] = (-1, -1, -1, -1)

    @property
    def done(self) -> bool:
        return self.packer.done

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray] | None:
        p = self.packer
        if not p.full and batch.num_rows:
            batch = batch.combine_chunks()
            epoch = batch.column("epoch").to_numpy()
            file_pos = batch.column("file_pos").to_numpy()
            row = batch.column("row").to_numpy()
            piece = batch.column("piece").to_numpy()
            last = batch.column("last_piece").to_numpy(zero_copy_only=False)
            bad = batch.column("bad").to_pylist()
            self._check_order((int(epoch[0]), int(file_pos[0]), int(row[0]), int(piece[0])))
            tok_col = batch.column("tokens").chunk(0)
            offsets, values = tok_col.offsets.to_numpy(), tok_col.values.to_numpy()
            for i in range(batch.num_rows):
                if p.full:
                    break
                if bad[i]:
                    if bad[i] == END_OF_DATA:
                        raise RuntimeError(
                            f"source {self.source} ran out in one stage: the {self.reads:,} file reads planned "
                            f"for its {p.max_rows:,} rows (at least {MIN_TOKENS_PER_FILE_BYTE} tokens per byte, "
                            f"at most {MAX_WRAP_EPOCHS} passes more) gave too few tokens. Its files are far too "
                            "small for the stage's budget, or mostly unreadable or empty: add data or lower its "
                            "mix weight")
                    p.note_bad(bad[i])
                    continue
                key = (int(epoch[i]), int(file_pos[i]), int(row[i]), int(piece[i]))
                p.add(key, values[offsets[i]:offsets[i + 1]], bool(last[i]))
            n = batch.num_rows - 1
            self._last_key = (int(epoch[n]), int(file_pos[n]), int(row[n]), int(piece[n]))
        rows = p.take_rows()
        if not len(rows):  # an empty tensor column would fall back to pickled objects
            return None
        return {"tokens": rows, "source": np.full(len(rows), self.source_id, dtype=np.int16)}

    def _check_order(self, first_key: tuple[int, int, int, int]) -> None:
        if first_key <= self._last_key:
            raise RuntimeError(
                f"source {self.source}: a block starting at {first_key} (epoch, file, row, piece) arrived after "
                f"{self._last_key}; the pack step must see blocks in stream order (preserve_order, one pack task "
                "at a time)")

    def end_report(self) -> dict:
        """Where the stream stopped and what it held, once every row is out."""
        stats = self.packer.final_stats()
        if stats.wraps:
            log.warning("source %s ran dry and wrapped %d time(s) into a new epoch", self.source, stats.wraps)
        return {"cursor": self.packer.end_cursor().to_dict(), "stats": stats.to_dict()}


def pack_in_stream_order(batch: pa.Table, *, packers, stage_key, config: dict):
    """The Dataset's pack step: a task that hands one block to the run's StagePackers actor and
    yields what it answers (the rows it completed, or with "mix" in the config whether the
    source is done). Run one at a time, so the actor sees blocks in order; the task's index in
    its operator is the block's place in the stream."""
    import ray
    from ray.data._internal.execution.interfaces.task_context import TaskContext

    task = TaskContext.get_current()  # Ray Data's own (internal) record of this map task
    rows = ray.get(packers.pack.remote(stage_key, config, batch, task.task_idx if task else None))
    if rows is not None:
        yield rows


MIN_TOKENS_PER_FILE_BYTE = 0.01  # far below real text (~0.35 for parquet-compressed English)


def planned_reads(spec: ReadSpec, start: SourceCursor, tokens: int) -> int:
    """How many files, in stream order from `start`, to plan read tasks for: enough for `tokens`
    even at an implausibly low token density (the cursor's own file, partly read, counted as
    nothing), so a stage never stops short, and at most MAX_WRAP_EPOCHS passes more. Not more:
    Ray Data puts every planned task in the object store when the stage starts, and whole
    passes of 2,410 files (7,230 tasks) took 5.6-7.6 s to a first block against 0.7-1.6 s for 30."""
    n = len(spec.files.paths)
    most = n * (MAX_WRAP_EPOCHS + 1) - start.file_pos
    if not spec.files.sizes:  # a listing without sizes: every pass allowed
        return most
    bytes_needed = tokens / MIN_TOKENS_PER_FILE_BYTE
    reads, fresh_bytes = 0, 0
    for _, _, index in stream_files(spec, start, most):
        reads += 1
        if reads > 1:
            fresh_bytes += spec.files.sizes[index]
            if fresh_bytes >= bytes_needed:
                break
    return reads


def pack_config(spec: ReadSpec, *, source_id: int, start: SourceCursor, seq_len: int, stride: int, eos_id: int,
                max_rows: int, skip_rows: int = 0) -> dict:
    """`Pack`'s arguments for one (stage, source) stream, the files to read included (the read
    tasks take them too). The Ray pack step and local_data both build their packer from this."""
    return {"source": spec.files.source, "source_id": source_id, "seq_len": seq_len, "stride": stride,
            "eos_id": eos_id, "max_rows": max_rows, "start": start.to_dict(),
            "reads": planned_reads(spec, start, max_rows * stride + seq_len), "skip_rows": skip_rows}


def build_source_dataset(spec: ReadSpec, *, source_id: int, start: SourceCursor, seq_len: int, stride: int,
                         max_rows: int, tokenizer: str, eos_id: int, tokenize_batch_size: int, data_cpus: float,
                         tokenize_tasks: int, object_store_bytes: int, packers, stage_key, mix: dict,
                         skip_rows: int = 0):
    """One source's pipeline for one stage: its packed rows (exactly `max_rows - skip_rows`) go
    to the stage's BatchAssembler in the run's StagePackers actor (`mix` says how it assembles);
    what the Dataset itself yields is one {"done"} row per packed block, for whoever drives it
    (stage_data.drive_source), which stops it at the source's last row."""
    import ray.data

    # Few concurrent reads: Ray Data would otherwise start a read per logical CPU and starve the
    # tokenizers of the real cores; reads are cheap next to tokenizing.
    config = pack_config(spec, source_id=source_id, start=start, seq_len=seq_len, stride=stride, eos_id=eos_id,
                         max_rows=max_rows, skip_rows=skip_rows)
    config["mix"] = mix
    tasks = ray.data.TaskPoolStrategy(size=tokenize_tasks)
    # override_num_blocks=1: Ray Data would otherwise cut every read block into ~200 / (read
    # tasks) pieces (13-17 on the demo) to reach its default parallelism, so many more tokenize
    # tasks for the same documents; the blocks are already small (BLOCK_BYTES).
    ds = ray.data.read_datasource(make_datasource(spec, start, config["reads"]), num_cpus=data_cpus,
                                  compute=tasks, override_num_blocks=1)
    ds = ds.map_batches(tokenize_batch, fn_kwargs={"tokenizer": tokenizer}, batch_size=tokenize_batch_size,
                        batch_format="pyarrow", num_cpus=data_cpus, compute=tasks)
    # Packing carries state from block to block, so it must see blocks in stream order: one pack
    # task at a time (preserve_order hands it the blocks in order), no retries (a retried block
    # would be packed twice; a failed pack fails the stage, which resumes). The state itself
    # lives in the run's StagePackers actor, not in a per-stage actor pool (see stage_packers).
    # Ray 2.60 has no named parameter for max_retries and warns on the catch-all (once per
    # stage and source, in the user's log); the setting is what the packer needs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        # A pack task may wait in the actor for the assembly to drain; Ray frees the CPU of a
        # task blocked in ray.get meanwhile, so the pipelines that drain it still run.
        ds = ds.map_batches(
            pack_in_stream_order, batch_size=None, batch_format="pyarrow", num_cpus=data_cpus,
            compute=ray.data.TaskPoolStrategy(size=1), max_retries=0,
            fn_kwargs={"packers": packers, "stage_key": stage_key, "config": config},
        )
    ds.context.execution_options.preserve_order = True
    # Small blocks: the first rows of a stage arrive after a few hundred documents are tokenized,
    # not after a whole file (map_batches coalesces its output up to this size).
    ds.context.target_max_block_size = BLOCK_BYTES
    # Backpressure's budget: the data in flight stays bounded however large the corpus.
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(object_store_memory=object_store_bytes)
    return ds
