"""Stage batches and held-out rows made in the calling process, without Ray.

The functions the Ray Data pipeline runs as tasks (the source's read tasks, `tokenize_batch`,
`Pack`) called one after another in a plain loop, and the batch assembly the train workers use
(`StageBatches`). Three users:
- the coordinator makes the validation rows this way (a few dozen documents: not worth a
  pipeline);
- the orchestration benchmark's plain loop trains on the Ray path's very batches made this way,
  so the two runs do the same work and differ only in Ray;
- a test holds the Ray path to it, row for row.
The batches are assembled by the same BatchAssembler as in the pipeline's StagePackers actor.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import SourceFiles
from yxanul_ray.mixing import BatchAssembler, MixSchedule
from yxanul_ray.packing import Pack, Packer
from yxanul_ray.readers import read_holdout_docs
from yxanul_ray.sources import make_datasource
from yxanul_ray.specs import JobSpec
from yxanul_ray.stage_data import SourcePlan, StageBatches, pack_spec, plan_stage_sources, read_spec, source_ids
from yxanul_ray.tokenizer import load_tokenizer, tokenize_batch


class LocalSource:
    """One source's packed rows for one stage, made on demand. It offers the one method of Ray
    Data's DataIterator that StageBatches uses, so the batches are assembled by the same code."""

    def __init__(self, job: JobSpec, files: SourceFiles, plan: SourcePlan, start: SourceCursor, eos_id: int):
        spec = read_spec(job, files)
        pack = pack_spec(spec, plan, start, eos_id)
        self._read_tasks = make_datasource(spec, start, pack.reads).get_read_tasks(1)
        self._pack = Pack(pack)
        self._tokenizer, self._batch_docs = job.data.tokenizer, job.data.tokenize_batch_size

    def iter_batches(self, **_ray_data_options) -> Iterator[dict[str, np.ndarray]]:
        """Packed-row blocks {"tokens", "source"} in stream order, until the stage's rows are out."""
        for task in self._read_tasks:
            for docs in task():
                for first in range(0, docs.num_rows, self._batch_docs):
                    rows = self._pack(tokenize_batch(docs.slice(first, self._batch_docs), self._tokenizer))
                    if rows is not None:
                        yield rows
                    if self._pack.done:
                        return

    def end_report(self) -> dict:
        """{"cursor", "stats"} as the StagePackers actor reports them; once the rows are all out."""
        return self._pack.end_report()


class LocalAssembly:
    """A stage's batches assembled from its LocalSources by the same BatchAssembler as the
    StagePackers actor's, drawing on each source only when the next batch needs its rows. It
    offers iter_batches like the split of the stage's batch Dataset, for StageBatches."""

    def __init__(self, sources: dict[str, LocalSource], assembler: BatchAssembler):
        self.sources, self.assembler = sources, assembler

    def iter_batches(self, **_ray_data_options) -> Iterator[dict[str, np.ndarray]]:
        streams = {s: src.iter_batches() for s, src in self.sources.items()}
        a = self.assembler
        while not a.finished:
            missing = a.missing()
            if not missing:
                yield a.take()
                continue
            source = next(iter(missing))
            rows = next(streams[source], None)
            if rows is None:
                raise RuntimeError(f"source {source} ended before the stage's scheduled rows")
            a.add(source, rows["tokens"])


def local_stage(job: JobSpec, stage_index: int, cursors: dict[str, SourceCursor], files: dict[str, SourceFiles],
                eos_id: int) -> tuple[StageBatches, dict[str, LocalSource]]:
    """One worker's batches of stage `stage_index` from `cursors` (the whole global batch: this
    is world size 1), and the sources, whose end reports give the next stage's cursors."""
    schedule, assembly = _stage_assembly(job, stage_index, cursors, files, eos_id, world=1)
    return StageBatches(assembly, schedule, source_ids(job)), assembly.sources


def _stage_assembly(job: JobSpec, stage_index: int, cursors: dict[str, SourceCursor], files: dict[str, SourceFiles],
                    eos_id: int, world: int) -> tuple[MixSchedule, LocalAssembly]:
    _, schedule, plans = plan_stage_sources(job, stage_index)
    sources = {s: LocalSource(job, files[s], sp, cursors.get(s, SourceCursor()), eos_id) for s, sp in plans.items()}
    return schedule, LocalAssembly(sources, BatchAssembler(schedule, world, source_ids(job)))


def local_global_batches(job: JobSpec, stage_index: int, cursors: dict[str, SourceCursor],
                         files: dict[str, SourceFiles], eos_id: int,
                         world: int) -> tuple[Iterator[dict[str, np.ndarray]], dict[str, LocalSource]]:
    """Stage `stage_index`'s global batches as `world` train workers train on them together: step
    s is the workers' batches s*world ... s*world + world - 1 (the split hands batch u to rank
    u % world) joined in rank order, so a stage's masked tail falls where the ranks' does (on the
    last ranks' last rows). With world 1, local_stage's batches. Also the sources, as local_stage."""
    _, assembly = _stage_assembly(job, stage_index, cursors, files, eos_id, world)
    worker_batches = assembly.iter_batches()

    def steps() -> Iterator[dict[str, np.ndarray]]:
        while True:
            ranks = [batch for _, batch in zip(range(world), worker_batches)]
            if not ranks:
                return
            yield {key: np.concatenate([batch[key] for batch in ranks]) for key in ranks[0]}

    return steps(), assembly.sources


def holdout_rows(job: JobSpec, files: dict[str, SourceFiles], eos_id: int, seq_len: int,
                 max_rows: int, tokenizer: str | None = None) -> dict[str, np.ndarray]:
    """Each source's held-out documents packed at one fixed seq_len (at most max_rows rows), so
    validation losses compare across stages. Sources without held-out documents are left out.
    `tokenizer`: what to load, as in stage_data.build_stage_data (job.data.tokenizer if None)."""
    tok = load_tokenizer(tokenizer or job.data.tokenizer)
    out = {}
    for name, source_files in files.items():
        spec = read_spec(job, source_files)
        if spec.holdout_docs == 0:
            continue
        docs = read_holdout_docs(spec)
        packer = Packer(seq_len, seq_len, eos_id, max_rows, SourceCursor())
        for i, ids in enumerate(tok.encode_batch(docs)):
            packer.add((0, 0, i, 0), np.asarray(ids, dtype=np.int32), True)
        rows = packer.take_rows()
        if len(rows):
            out[name] = rows
    return out
