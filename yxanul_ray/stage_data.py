"""A stage's data: per-source packed Datasets sized by the mix schedule, their splits, and the
per-worker batch assembly that draws rows from each source at the scheduled counts.

`build_stage_data(stage, cursors, world size) -> StageData` is what the coordinator calls for
every stage; `StageData.end_state` resolves to the next stage's cursors (and this stage's
per-source stats) as soon as the packers have produced the stage's last rows, which is before
the trainer has consumed them, so stage k+1 can be built while stage k still trains.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from yxanul_ray.config import JobSpec, stage_stride
from yxanul_ray.curriculum import StagePlan, plan_curriculum
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import SourceFiles
from yxanul_ray.mixing import MixSchedule, build_schedule
from yxanul_ray.sources import ReadSpec, build_source_dataset


@dataclass
class StageData:
    index: int
    start_step: int
    """First step these datasets feed (non-zero when resuming mid-stage)."""
    plan: StagePlan
    schedule: MixSchedule
    datasets: dict[str, Any]
    """Source -> ray.data.Dataset of the stage's packed rows of that source (none for a source
    without rows in the stage)."""
    end_state: Any
    """ObjectRef -> {source: {"cursor": {...}, "stats": {...}}}."""

    def split(self, world_size: int) -> list[dict[str, Any]]:
        """One {source: DataIterator} per worker; equal=True so no rank waits on a longer shard."""
        per_source = {s: ds.streaming_split(world_size, equal=True) for s, ds in self.datasets.items()}
        return [{s: its[rank] for s, its in per_source.items()} for rank in range(world_size)]


def source_ids(job: JobSpec) -> dict[str, int]:
    """Each source's id in the batches' "source" column: its place in the config."""
    return {name: i for i, name in enumerate(job.sources)}


def read_spec(job: JobSpec, files: SourceFiles) -> ReadSpec:
    src = job.sources[files.source]
    return ReadSpec(files=files, text_field=src.text_field, max_doc_chars=job.data.max_doc_chars,
                    holdout_docs=src.validation_docs, seed=job.run.seed)


@dataclass(frozen=True)
class SourcePlan:
    """What one source must produce for one stage: the packer's settings and its row count."""
    source_id: int
    seq_len: int
    stride: int
    max_rows: int
    """The stage's rows of this source, all workers together."""
    skip_rows: int
    """Rows of the steps before `start_step` (resuming mid-stage): made again, not emitted."""


def plan_stage_sources(job: JobSpec, stage_index: int, world_size: int,
                       start_step: int = 0) -> tuple[StagePlan, MixSchedule, dict[str, SourcePlan]]:
    """The stage's plan, its mix schedule and, per source with rows in it, what to produce.
    Pure: the Ray pipeline (build_stage_data) and the in-process one (local_data) share it."""
    stage = job.curriculum.stages[stage_index]
    plan = plan_curriculum(job.curriculum, world_size)[stage_index]
    schedule = build_schedule(stage.mix, plan, world_size)
    done = schedule.totals_per_worker(0, start_step)
    ids = source_ids(job)
    stride = stage_stride(job.curriculum, stage)
    sources = {s: SourcePlan(ids[s], stage.seq_len, stride, n * world_size, done[s] * world_size)
               for s, n in schedule.totals_per_worker().items() if n > 0}
    return plan, schedule, sources


def build_stage_data(job: JobSpec, stage_index: int, cursors: dict[str, SourceCursor], world_size: int,
                     files: dict[str, SourceFiles], eos_id: int, packers, run_key: str = "",
                     start_step: int = 0) -> StageData:
    """Build stage `stage_index`'s per-source Datasets starting at `cursors` (the stage's start)
    and feeding steps from `start_step` on, packed by `packers` (the run's StagePackers actor).
    Lazy: nothing runs until a consumer iterates."""
    plan, schedule, sources = plan_stage_sources(job, stage_index, world_size, start_step)
    # Unique per build: a rebuilt stage (resume, retry) must never read an older build's report.
    stage_key = (run_key, stage_index, uuid.uuid4().hex)
    datasets = {
        s: build_source_dataset(
            read_spec(job, files[s]), source_id=sp.source_id, start=cursors.get(s, SourceCursor()),
            seq_len=sp.seq_len, stride=sp.stride, max_rows=sp.max_rows,
            tokenizer=job.data.tokenizer, eos_id=eos_id, tokenize_batch_size=job.data.tokenize_batch_size,
            data_cpus=job.data.data_cpus, tokenizer_actors=job.data.tokenizer_actors,
            object_store_bytes=job.data.object_store_mb_per_source << 20, skip_rows=sp.skip_rows,
            packers=packers, stage_key=stage_key)
        for s, sp in sources.items()
    }
    end_state = packers.wait.remote(stage_key, list(datasets))
    return StageData(stage_index, start_step, plan, schedule, datasets, end_state)


class _RowReader:
    """Takes exact row counts from one source's DataIterator, across block boundaries."""

    def __init__(self, iterator, prefetch_batches: int):
        self._blocks = iter(iterator.iter_batches(batch_size=None, batch_format="numpy",
                                                  prefetch_batches=prefetch_batches))
        self._tokens: np.ndarray | None = None
        self._pos = 0

    def prime(self) -> None:
        """Fetch the first block (starts this source's pipeline and its prefetching)."""
        if self._tokens is None:
            self._next_block()

    def _next_block(self) -> None:
        try:
            block = next(self._blocks)
        except StopIteration:
            raise RuntimeError("a source's shard ended before the stage's scheduled rows") from None
        self._tokens, self._pos = block["tokens"], 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self._tokens is None or self._pos >= len(self._tokens):
                self._next_block()
                continue
            take = min(n, len(self._tokens) - self._pos)
            parts.append(self._tokens[self._pos:self._pos + take])
            self._pos += take
            n -= take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class StageBatches:
    """One worker's batches for one stage: {"tokens": [rows, seq_len+1] int32, "source": [rows]
    int16} per step, with exactly the scheduled rows of each source. `prime()` starts every
    source's pipeline (call it ahead of time to hide a stage switch)."""

    def __init__(self, iterators: dict[str, Any], schedule: MixSchedule, source_ids: dict[str, int],
                 start_step: int = 0, prefetch_batches: int = 2):
        self.readers = {s: _RowReader(it, prefetch_batches) for s, it in iterators.items()}
        self.schedule, self.source_ids, self.start_step = schedule, source_ids, start_step
        self._primed = False

    def prime(self) -> None:
        if not self._primed:
            with ThreadPoolExecutor(max_workers=max(1, len(self.readers))) as pool:
                list(pool.map(_RowReader.prime, self.readers.values()))
            self._primed = True

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.prime()
        for step, counts in enumerate(self.schedule.counts()):
            if step < self.start_step:
                continue
            tokens, sources = [], []
            for s, n in counts.items():
                if n:
                    tokens.append(self.readers[s].take(n))
                    sources.append(np.full(n, self.source_ids[s], dtype=np.int16))
            yield {"tokens": np.concatenate(tokens), "source": np.concatenate(sources)}


def iter_worker_batches(iterators: dict[str, Any], schedule: MixSchedule, source_ids: dict[str, int],
                        prefetch_batches: int = 2, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    return iter(StageBatches(iterators, schedule, source_ids, start_step, prefetch_batches))
