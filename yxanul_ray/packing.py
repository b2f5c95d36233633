"""Packing one source's token stream into rows of seq_len + 1 tokens: the pure Packer, and Pack,
which feeds it tokenized document blocks (in the run's StagePackers actor, or in-process).

Documents are concatenated with EOS after each; row i covers stream positions
[i*stride, i*stride + seq_len]. With stride == seq_len every token is a target exactly once
(consecutive rows share one input token); a smaller stride is the predecessor's overlap. The
tail of a document continues into the next row, and nothing is buffered beyond one row's worth.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from yxanul_ray.cursors import SourceCursor, SourceStats
from yxanul_ray.errors import CannotContinue
from yxanul_ray.read_plan import MIN_TOKENS_PER_FILE_BYTE
from yxanul_ray.readers import END_OF_DATA, MAX_WRAP_EPOCHS

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

DocKey = tuple[int, int, int, int]  # (epoch, file_pos, row, piece)


@dataclass(frozen=True)
class PackSpec:
    """One (stage, source) stream's packing settings, made once where the stage is planned
    (stage_data.pack_spec) and carried as they are to the packer, wherever it runs."""

    source: str
    source_id: int
    seq_len: int
    stride: int
    eos_id: int
    max_rows: int
    """Rows the stream makes, all workers together."""
    start: SourceCursor
    """Where the stream starts (the stage's start cursor)."""
    reads: int
    """File reads planned for it (readers.planned_reads); the read tasks take the same."""
    skip_rows: int = 0
    """Rows of steps already trained (a mid-stage resume): made again, not emitted."""


@dataclass(frozen=True)
class _Segment:
    start: int
    """Stream position of the segment's first token."""
    length: int
    """Tokens in the stream, the EOS included when the piece ends a document."""
    key: DocKey
    first_offset: int
    """Token offset inside the piece of the segment's first token (non-zero after a resume)."""


class Packer:
    """Stateful packer for one source in one stage; see module docstring.

    Feed it documents in stream order with `add`; it returns the rows that became complete and
    stops after `max_rows`, at which point `end_cursor()` tells where the next stage starts.
    """

    def __init__(self, seq_len: int, stride: int, eos_id: int, max_rows: int, start: SourceCursor,
                 skip_rows: int = 0):
        if not 0 < stride <= seq_len:
            raise ValueError(f"stride {stride} must be in 1..seq_len ({seq_len})")
        self.seq_len, self.stride, self.eos_id, self.max_rows = seq_len, stride, eos_id, max_rows
        self.start = start
        # Resuming mid-stage: the first skip_rows rows were trained before the interruption; they
        # are re-made (same stream, same rows) and dropped, so the stage continues exactly.
        self.skip_rows = skip_rows
        self.rows_out = 0
        self.stats = SourceStats()
        self._buf = np.empty(0, dtype=np.int32)
        self._buf_start = 0  # stream position of _buf[0]
        self._pending: list[np.ndarray] = []  # added since the last take_rows (one concatenate)
        self._stream_len = 0
        self._segments: deque[_Segment] = deque()
        self._epoch = start.epoch
        self._end: SourceCursor | None = None
        # Stream positions needed for max_rows rows; later documents are not consumed.
        self._needed = (max_rows - 1) * stride + seq_len + 1 if max_rows > 0 else 0

    @property
    def done(self) -> bool:
        return self.rows_out >= self.max_rows

    def note_bad(self, kind: str) -> None:
        if not self.full:
            self.stats.bad[kind] = self.stats.bad.get(kind, 0) + 1

    @property
    def full(self) -> bool:
        """Holds every token the stage's rows need; later documents belong to the next stage."""
        return self._stream_len >= self._needed

    def add(self, key: DocKey, tokens: np.ndarray, last_piece: bool) -> None:
        """Append one document piece (and its EOS when it ends the document)."""
        if self.full:
            return
        if key[0] != self._epoch:
            self._epoch = key[0]
            self.stats.wraps += 1
        if last_piece:
            tokens = np.append(tokens.astype(np.int32, copy=False), np.int32(self.eos_id))
        offset = 0
        if key == self.start.key() and self.start.token_offset:
            # Resuming inside this piece: its first token_offset tokens were trained already.
            offset = min(self.start.token_offset, len(tokens))
            tokens = tokens[offset:]
        if key[3] == 0 and offset == 0:
            self.stats.documents += 1
        if len(tokens) == 0:
            return
        self._segments.append(_Segment(self._stream_len, len(tokens), key, offset))
        self._pending.append(tokens.astype(np.int32, copy=False))
        self._stream_len += len(tokens)

    def take_rows(self) -> np.ndarray:
        """Rows completed so far, shape [n, seq_len + 1] int32 (n may be 0)."""
        width = self.seq_len + 1
        if self._pending:
            self._buf = np.concatenate([self._buf, *self._pending])
            self._pending.clear()
        avail = len(self._buf)
        n = 0 if avail < width else (avail - width) // self.stride + 1
        n = min(n, self.max_rows - self.rows_out)
        if n <= 0:
            return np.empty((0, width), dtype=np.int32)
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, width)[:: self.stride][:n]
        rows = np.ascontiguousarray(windows)
        first_row = self.rows_out
        self.rows_out += n
        self.stats.rows += n
        self.stats.trained_tokens += n * self.seq_len
        self.stats.eos += int(np.count_nonzero(rows[:, 1:] == self.eos_id))
        if self.done:
            self._end = self._cursor_at(self._last_target_pos())
        drop = n * self.stride
        self._buf = self._buf[drop:]
        self._buf_start += drop
        while self._segments and self._segments[0].start + self._segments[0].length <= self._buf_start:
            self._segments.popleft()
        if first_row < self.skip_rows:
            rows = rows[self.skip_rows - first_row:]
        return rows

    def _last_target_pos(self) -> int:
        # The next stage starts at the last trained target, used again only as an input.
        return (self.max_rows - 1) * self.stride + self.seq_len

    def _cursor_at(self, pos: int) -> SourceCursor:
        for seg in self._segments:
            if seg.start <= pos < seg.start + seg.length:
                e, f, r, p = seg.key
                return SourceCursor(e, f, r, p, seg.first_offset + (pos - seg.start))
        raise AssertionError(f"stream position {pos} is not buffered")  # a packing bug

    def end_cursor(self) -> SourceCursor:
        if self._end is None:
            raise RuntimeError("the stage has not produced all its rows yet")
        return self._end

    def final_stats(self) -> SourceStats:
        """Stats for the rows emitted; distinct tokens are stream positions first trained here."""
        self.stats.distinct_tokens = (self.rows_out - 1) * self.stride + self.seq_len if self.rows_out else 0
        return self.stats


class Pack:
    """One (stage, source) stream's packing state: tokenized document blocks in, packed rows out,
    exactly `max_rows` of them. Lives in the run's StagePackers actor; blocks must arrive in
    stream order, which it checks (a reordered stream would silently change the rows)."""

    def __init__(self, spec: PackSpec):
        self.source, self.source_id, self.reads = spec.source, spec.source_id, spec.reads
        self.packer = Packer(spec.seq_len, spec.stride, spec.eos_id, spec.max_rows, spec.start, spec.skip_rows)
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
                        raise CannotContinue(
                            f"source {self.source} ran out in one stage: the {self.reads:,} file reads planned "
                            f"for its {p.max_rows:,} rows (at least {MIN_TOKENS_PER_FILE_BYTE} tokens per byte, "
                            f"at most {MAX_WRAP_EPOCHS} passes more) gave too few tokens: its files are far too "
                            "small for the stage's budget, or mostly unreadable or empty; fix: add data to "
                            f"sources.{self.source}, or lower its mix weight")
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
