"""Which files a stage's read tasks read: in stream order from a source's cursor, across wrap
epochs (each pass in a new seeded order), and how many to plan so the stage never stops short.
Pure: the Ray pipeline, the in-process one and the tests share it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from yxanul_ray.cursors import SourceCursor, file_order
from yxanul_ray.readers import MAX_WRAP_EPOCHS, ReadSpec


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
