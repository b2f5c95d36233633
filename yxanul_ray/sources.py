"""One source's pipeline for one stage as a Ray Dataset: read -> tokenize -> pack.

- Read: a Datasource with one read task per file (readers.read_file_docs), from the source's
  cursor on, across wrap epochs.
- Tokenize: map_batches as tasks on pooled worker processes (tokenizer.tokenize_batch); each
  process loads the tokenizer once (a per-stage actor pool would start new processes at every
  stage boundary).
- Pack: map_batches as one task at a time that hands each block to the run's StagePackers actor
  (packing carries a document's tail into the next row, so it needs the stream in order and one
  holder of state). It makes exactly the stream's rows and hands them to the stage's batch
  assembly in the same actor, which records where the stream stopped.

Ray Data runs these with preserve_order=True so the stream order is the file order, which is
what makes cursors and seeded runs reproducible.
"""

from __future__ import annotations

import warnings

import pyarrow as pa

from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import Redacted
from yxanul_ray.packing import PackSpec
from yxanul_ray.read_plan import one_file, stream_files
from yxanul_ray.readers import DOC_SCHEMA, ReadSpec, read_file_docs
from yxanul_ray.tokenizer import tokenize_batch

BLOCK_BYTES = 2 << 20


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


def pack_in_stream_order(batch: pa.Table, *, packers, stage_key, spec: PackSpec, mix: dict | None):
    """The Dataset's pack step: a task that hands one block to the run's StagePackers actor and
    yields what it answers (the rows it completed, or with `mix` whether the source is done).
    Run one at a time, so the actor sees blocks in order; the task's index in its operator is
    the block's place in the stream."""
    import ray

    from yxanul_ray.ray_internals import current_map_task_index

    rows = ray.get(packers.pack.remote(stage_key, spec, mix, batch, current_map_task_index()))
    if rows is not None:
        yield rows


def build_source_dataset(read: ReadSpec, pack: PackSpec, *, tokenizer: str, tokenize_batch_size: int,
                         data_cpus: float, tokenize_tasks: int, object_store_bytes: int, packers, stage_key,
                         mix: dict):
    """One source's pipeline for one stage: its packed rows (exactly `pack.max_rows -
    pack.skip_rows`) go to the stage's BatchAssembler in the run's StagePackers actor (`mix` says
    how it assembles); what the Dataset itself yields is one {"done"} row per packed block, for
    whoever drives it (stage_data.drive_source), which stops it at the source's last row."""
    import ray.data

    # Few concurrent reads: Ray Data would otherwise start a read per logical CPU and starve the
    # tokenizers of the real cores; reads are cheap next to tokenizing.
    tasks = ray.data.TaskPoolStrategy(size=tokenize_tasks)
    # override_num_blocks=1: Ray Data would otherwise cut every read block into ~200 / (read
    # tasks) pieces (13-17 on the demo) to reach its default parallelism, so many more tokenize
    # tasks for the same documents; the blocks are already small (BLOCK_BYTES).
    ds = ray.data.read_datasource(make_datasource(read, pack.start, pack.reads), num_cpus=data_cpus,
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
            fn_kwargs={"packers": packers, "stage_key": stage_key, "spec": pack, "mix": mix},
        )
    ds.context.execution_options.preserve_order = True
    # Small blocks: the first rows of a stage arrive after a few hundred documents are tokenized,
    # not after a whole file (map_batches coalesces its output up to this size).
    ds.context.target_max_block_size = BLOCK_BYTES
    # Backpressure's budget: the data in flight stays bounded however large the corpus.
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(object_store_memory=object_store_bytes)
    return ds
