"""A stage's data: per-source pipelines that pack into the stage's batch assembly, the one
Dataset of worker batches the train workers split, and the worker side that takes each step's
rows from its split.

`build_stage_data(stage, cursors, world size) -> StageData` is what the coordinator calls for
every stage. `StageData.split(world)` returns one iterator per worker over the stage's Dataset
of assembled batches (one streaming_split for the stage); `StageData.start()` starts the source
pipelines, whose executors run on threads of the calling process (no process per source).
`StageData.end_state` resolves to the next stage's cursors (and this stage's per-source stats)
as soon as the packers have produced the stage's last rows, which is before the trainer has
consumed them, so stage k+1 can be built while stage k still trains.

Why one Dataset of assembled batches rather than a split per source: every streaming_split is a
coordinator actor, a process of its own, so the demo's ten stages started 28 of them (~2.5 CPU-s
each with their share of the raylet, measured); the assembly order makes batch u rank
u % world's, because streaming_split(equal=True) under preserve_order hands equal-sized blocks
to the ranks in turn, and each batch is its own read task's one block.
"""

from __future__ import annotations

import logging
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from yxanul_ray.curriculum import StagePlan, plan_curriculum
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import SourceFiles
from yxanul_ray.mixing import MixSchedule, build_schedule, rows_per_rank
from yxanul_ray.packing import PackSpec
from yxanul_ray.read_plan import planned_reads
from yxanul_ray.readers import ReadSpec
from yxanul_ray.sources import build_source_dataset
from yxanul_ray.specs import JobSpec, stage_stride

log = logging.getLogger(__name__)

STAGES_AHEAD = 2
"""Stages whose data the workers start before they need it. Two, because a stage can be shorter
than a cold pipeline start (the demo's first stages are a few steps); stage k+2's data is built
only once stage k+1's is all produced, so this adds no concurrent pipeline, it only starts that
one sooner."""


@dataclass
class StageData:
    index: int
    start_step: int
    """First step these datasets feed (non-zero when resuming mid-stage)."""
    plan: StagePlan
    schedule: MixSchedule
    datasets: dict[str, Any]
    """Source -> ray.data.Dataset of that source's pipeline for the stage (none for a source
    without rows in the stage); what it yields is only whether the source is done."""
    batches: Any
    """ray.data.Dataset of the stage's worker batches in assembly order (from `start_step`)."""
    end_state: Any
    """ObjectRef -> {source: {"cursor": {...}, "stats": {...}}}."""
    packers: Any
    stage_key: tuple
    _started: bool = False

    def split(self, world_size: int) -> list[Any]:
        """One DataIterator per worker over the stage's batches; equal=True so no rank waits on
        a longer shard. Nothing runs until `start`."""
        return self.batches.streaming_split(world_size, equal=True)

    def start(self) -> None:
        """Start the source pipelines (once): their executors run on threads of this process,
        and their rows wait in the assembly for the batch reads."""
        if self._started:
            return
        self._started = True
        for source, ds in self.datasets.items():
            threading.Thread(target=drive_source, args=(ds, self.packers, self.stage_key, source), daemon=True,
                             name=f"stage-{self.index + 1}-{source}").start()

    def cancel(self, reason: str) -> None:
        """Stop this build: its waiting source pipelines and batch reads raise `reason`."""
        self.packers.fail.remote(self.stage_key, reason)


def drive_source(ds, packers, stage_key, source: str) -> None:
    """Run one source's pipeline until its last row is packed (its executor runs here), then
    stop it; a failure fails the stage's batches, so the workers see it.

    It reads the pipeline's blocks by reference (`iter_internal_ref_bundles`), not with
    `iter_batches`: leaving `iter_batches` early shuts the executor down with a forced cancel,
    and a forced cancel ends the worker process of every task still running (the reads and
    tokenizers working ahead), so Ray starts new ones, and a cancel that reaches a worker after
    it moved on to one of the stage's batch reads fails the worker group. Dropping the bundle
    iterator shuts the executor down unforced: the tasks are cancelled, their processes stay in
    the pool."""
    import ray
    from ray.data.block import BlockAccessor

    from yxanul_ray.ray_internals import iter_ref_bundles

    bundles = None
    try:
        # Inside the try: this call already runs the pipeline up to its first block, so a source
        # that fails at once (a missing text field) raises here.
        bundles = iter_ref_bundles(ds)
        for bundle in bundles:
            for block in ray.get(bundle.block_refs):
                if BlockAccessor.for_block(block).to_numpy("done").any():
                    return
        raise RuntimeError("its pipeline ended before the stage's rows were made")
    except Exception as e:  # noqa: BLE001 - handed to the stage's readers, raised on the workers
        log.warning("stage data of source %s failed: %s", source, e)
        packers.fail.remote(stage_key, f"source {source}: {e}")
    finally:
        del bundles  # the executor's output iterator shuts it down (unforced) when collected


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


def plan_stage_sources(job: JobSpec, stage_index: int,
                       start_step: int = 0) -> tuple[StagePlan, MixSchedule, dict[str, SourcePlan]]:
    """The stage's plan, its mix schedule and, per source with rows in it, what to produce: the
    same for any number of workers. Pure: the Ray pipeline (build_stage_data) and the in-process
    one (local_data) share it."""
    stage = job.curriculum.stages[stage_index]
    plan = plan_curriculum(job.curriculum)[stage_index]
    schedule = build_schedule(stage.mix, plan)
    done = schedule.totals(0, start_step)
    ids = source_ids(job)
    stride = stage_stride(job.curriculum, stage)
    sources = {s: SourcePlan(ids[s], stage.seq_len, stride, n, done[s])
               for s, n in schedule.totals().items() if n > 0}
    return plan, schedule, sources


def pack_spec(read: ReadSpec, plan: SourcePlan, start: SourceCursor, eos_id: int) -> PackSpec:
    """The packer's settings for one (stage, source) stream from `start`, the file reads it plans
    included (the read tasks take the same)."""
    return PackSpec(source=read.files.source, source_id=plan.source_id, seq_len=plan.seq_len, stride=plan.stride,
                    eos_id=eos_id, max_rows=plan.max_rows, start=start,
                    reads=planned_reads(read, start, plan.max_rows * plan.stride + plan.seq_len),
                    skip_rows=plan.skip_rows)


def build_stage_data(job: JobSpec, stage_index: int, cursors: dict[str, SourceCursor], world_size: int,
                     files: dict[str, SourceFiles], eos_id: int, packers, run_key: str = "",
                     start_step: int = 0, tokenizer: str | None = None) -> StageData:
    """Build stage `stage_index`'s source pipelines starting at `cursors` (the stage's start) and
    its Dataset of worker batches for steps from `start_step` on, packed and assembled by
    `packers` (the run's StagePackers actor). Lazy: nothing runs until `split`. `tokenizer` is
    what the tokenize tasks load (tokenizer.run_tokenizer's; job.data.tokenizer if None)."""
    plan, schedule, sources = plan_stage_sources(job, stage_index, start_step)
    # Unique per build: a rebuilt stage (resume, retry) must never read an older build's report.
    stage_key = (run_key, stage_index, uuid.uuid4().hex)
    store_bytes = job.data.object_store_mb_per_source << 20
    mix = {"schedule": schedule, "world": world_size, "start_step": start_step, "source_ids": source_ids(job),
           "budget_rows": assembly_budget_rows(schedule, store_bytes, plan.seq_len)}
    datasets = {}
    for s, sp in sources.items():
        read = read_spec(job, files[s])
        datasets[s] = build_source_dataset(
            read, pack_spec(read, sp, cursors.get(s, SourceCursor()), eos_id),
            tokenizer=tokenizer or job.data.tokenizer, tokenize_batch_size=job.data.tokenize_batch_size,
            data_cpus=job.data.data_cpus, tokenize_tasks=job.data.tokenize_tasks,
            object_store_bytes=store_bytes, packers=packers, stage_key=stage_key, mix=mix)
    batches = batch_dataset(packers, stage_key, mix, plan.seq_len, job.data.data_cpus)
    end_state = packers.wait.remote(stage_key, list(datasets))
    return StageData(stage_index, start_step, plan, schedule, datasets, batches, end_state, packers, stage_key)


def row_bytes(seq_len: int) -> int:
    """A packed row's bytes: seq_len + 1 int32 tokens."""
    return 4 * (seq_len + 1)


def assembly_budget_rows(schedule: MixSchedule, store_bytes: int, seq_len: int) -> dict[str, int]:
    """Packed rows a source may queue for the assembly before its pipeline waits: its share of
    the object-store budget, and never less than two steps' rows (a step's batches are made
    together: less would deadlock)."""
    most = {s: 0 for s in schedule.sources}
    for counts in schedule.counts():
        for s, n in counts.items():
            most[s] = max(most[s], n)
    return {s: max(2 * most[s], store_bytes // row_bytes(seq_len)) for s in schedule.sources}


def batch_dataset(packers, stage_key, mix: dict, seq_len: int, data_cpus: float):
    """The stage's worker batches as a Dataset: one read task per batch, each returning one
    block, so no two batches share a block and streaming_split hands batch u to rank u % world.
    Read in order, two at a time (the second waits on the first inside the actor), and never
    retried: a batch is taken from the assembly once."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    steps = mix["schedule"].step_rows[mix["start_step"]:]
    rows = [rows_per_rank(n, mix["world"]) for n in steps for _ in range(mix["world"])]

    class StageBatchesDatasource(Datasource):
        def get_name(self) -> str:
            return "StageBatches"

        def estimate_inmemory_data_size(self):
            return sum(rows) * row_bytes(seq_len)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda i=i: [take_batch(packers, stage_key, mix, i)],
                             BlockMetadata(num_rows=n, size_bytes=None, exec_stats=None, input_files=None))
                    for i, n in enumerate(rows)]

    # override_num_blocks: Ray Data would otherwise cut each read task's block into pieces to
    # reach its default parallelism.
    # A read waits in the actor until its batch is assembled; Ray frees the CPU of a task
    # blocked in ray.get meanwhile, so the tasks making the rows still run.
    # Ray 2.60 has no named parameter for max_retries and warns on the catch-all.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ray.data.read_datasource(StageBatchesDatasource(), num_cpus=data_cpus, override_num_blocks=len(rows),
                                      compute=ray.data.TaskPoolStrategy(size=2), ray_remote_args={"max_retries": 0})
    ds.context.execution_options.preserve_order = True
    # A batch is never split into blocks (nor joined with the next): one block per read task.
    ds.context.target_max_block_size = max(ds.context.target_max_block_size or 0, 4 * max(rows) * row_bytes(seq_len))
    return ds


def take_batch(packers, stage_key, mix: dict, index: int):
    """A read task of the batch Dataset: batch `index` from the assembly, as a block."""
    import ray
    from ray.data.block import BlockAccessor

    return BlockAccessor.batch_to_block(ray.get(packers.take.remote(stage_key, mix, index)))


class _RowReader:
    """Takes exact row counts from one DataIterator, across block boundaries."""

    def __init__(self, iterator, prefetch_batches: int):
        self._blocks = iter(iterator.iter_batches(batch_size=None, batch_format="numpy",
                                                  prefetch_batches=prefetch_batches))
        self._block: dict[str, np.ndarray] | None = None
        self._pos = 0

    def prime(self) -> None:
        """Fetch the first block (starts the stage's batch reads and their prefetching)."""
        if self._block is None:
            self._next_block()

    def _next_block(self) -> None:
        try:
            block = next(self._blocks)
        except StopIteration:
            raise RuntimeError("a worker's shard of the stage ended before the stage's scheduled rows") from None
        self._block, self._pos = {"tokens": block["tokens"], "source": block["source"]}, 0

    def take(self, n: int) -> dict[str, np.ndarray]:
        parts = []
        while n > 0:
            if self._block is None or self._pos >= len(self._block["tokens"]):
                self._next_block()
                continue
            take = min(n, len(self._block["tokens"]) - self._pos)
            parts.append({k: v[self._pos:self._pos + take] for k, v in self._block.items()})
            self._pos += take
            n -= take
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in ("tokens", "source")}


class StageBatches:
    """One worker's batches for one stage: {"tokens": [rows, seq_len+1] int32, "source": [rows]
    int16} per step, each step's rows in order from the worker's split of the stage's batches.
    `prime()` starts the stage's reads (call it ahead of time to hide a stage switch)."""

    def __init__(self, iterator, schedule: MixSchedule, source_ids: dict[str, int], start_step: int = 0,
                 prefetch_batches: int = 2, world: int = 1):
        self.reader = _RowReader(iterator, prefetch_batches)
        self.schedule, self.source_ids, self.start_step, self.world = schedule, source_ids, start_step, world
        self.step_counts = list(schedule.counts())
        """Each step's global rows per source (the whole step, every rank's slice together)."""
        self._primed = False

    def prime(self) -> None:
        if not self._primed:
            self.reader.prime()
            self._primed = True

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.prime()
        for rows in self.schedule.step_rows[self.start_step:]:
            yield self.reader.take(rows_per_rank(rows, self.world))


def iter_worker_batches(iterator, schedule: MixSchedule, source_ids: dict[str, int], prefetch_batches: int = 2,
                        start_step: int = 0, world: int = 1) -> Iterator[dict[str, np.ndarray]]:
    return iter(StageBatches(iterator, schedule, source_ids, start_step, prefetch_batches, world))
