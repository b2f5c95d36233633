"""One actor per run that packs every stage's sources and records where each stopped.

Packing carries a document's tail from one block into the next, so each (stage, source) stream
needs one holder of state that sees its blocks in order. Ray Data's way to hold state is an
actor pool per map step, and a new pool per Dataset: one fresh worker process per stage and
source, whose starts take CPU from training on a small node. Here the
state lives in this long-lived actor instead, keyed by (stage build, source); the Dataset's pack
step is a plain task (one at a time, in stream order) that hands each block over and returns
the rows. The end of each stream (cursor and stats) is recorded here too, for whoever plans the
next stage (the coordinator, or a test). An async actor, so waiting for an end costs no thread.

Ray restarts it if it dies. Its state is then gone, so every block carries its place in the
stream (the pack task's index): a restarted actor refuses a stream it did not see begin, and
that stage fails and is rebuilt from its start cursor like any failed stage, instead of packing
the rest of a stream as if it were the start. The coordinator also registers each stage build
(`begin`) before its pipelines start: a restarted actor refuses every pack and take of a build
begun before the restart, and says whether it holds a build (`holds`), so the coordinator hands
out no build the restart has lost (a batch read of it would wait for rows that never come).

It also mixes: a stream given a `mix` hands its rows to the stage's BatchAssembler
here instead of returning them, and the stage's one Dataset (stage_data) takes the assembled
worker batches in order with `take`. So a stage needs one streaming_split, not one per source.
A pack call waits while its source has more rows queued than its budget: that is the sources'
backpressure, and with it Ray Data's own, up the source pipeline.
"""

from __future__ import annotations

import asyncio

import numpy as np
import ray

from yxanul_ray.mixing import BatchAssembler
from yxanul_ray.packing import Pack, PackSpec
from yxanul_ray.raycluster import actor_was_restarted


@ray.remote(num_cpus=0, max_restarts=-1)
class StagePackers:
    def __init__(self) -> None:
        self._packs: dict[tuple, object] = {}
        self._next_block: dict[tuple, int] = {}
        self._reports: dict[tuple, dict] = {}
        self._events: dict[tuple, asyncio.Event] = {}
        self._mixes: dict = {}
        self._mix_changed: dict = {}
        self._made: dict = {}
        self._failed: dict = {}
        self._begun: set = set()
        self._restarted = actor_was_restarted()

    # Retried across a restart (max_task_retries=-1): both are safe to repeat, and a begin that
    # lands on the restarted actor comes before any of its build's pipelines run.
    @ray.method(max_task_retries=-1)
    def begin(self, stage_key) -> None:
        """Register a stage build before its pipelines start or any rank reads it."""
        self._begun.add(stage_key)

    @ray.method(max_task_retries=-1)
    def holds(self, stage_key) -> bool:
        """Whether this actor holds the build's state: False for one begun before a restart."""
        return stage_key in self._begun

    def _raise_if_lost(self, stage_key) -> None:
        if self._restarted and stage_key not in self._begun:
            raise RuntimeError("the StagePackers actor restarted and lost this stage build's rows (it began before "
                               "the restart); the workers restart from their last checkpoint and the stage is rebuilt")

    def _event(self, key: tuple) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def pack(self, stage_key, spec: PackSpec, mix: dict | None, batch, block_index: int | None) -> dict | None:
        """Pack block `block_index` (0, 1, 2, ... in stream order; None where Ray Data does not
        say) of a source's tokenized documents for the stage build `stage_key`; block 0 starts
        the packer from `spec`. Returns the rows that became complete, or None; or, with `mix`,
        hands them to the stage's assembler and returns {"done": [whether the source is done]}."""
        source = spec.source
        self._raise_if_failed(stage_key)
        key = (stage_key, source)
        pack = self._packs.get(key)
        if pack is None:
            if key in self._reports:  # blocks still in flight when the stage's rows were all made
                return None if mix is None else {"done": np.array([True])}
            if block_index:
                raise RuntimeError(
                    f"source {source}: block {block_index} of a stage's stream reached a packer that never saw the "
                    "stream begin (the StagePackers actor restarted); the stage is rebuilt from its start cursor")
            self._raise_if_lost(stage_key)
            pack = self._packs[key] = Pack(spec)
            self._next_block[key] = 0
        if block_index is not None:
            if block_index != self._next_block[key]:
                raise RuntimeError(f"source {source}: block {block_index} of a stage's stream arrived when block "
                                   f"{self._next_block[key]} was due; the pack step must run one task at a time")
            self._next_block[key] += 1
        rows = pack(batch)
        if pack.done:
            self._reports[key] = pack.end_report()
            del self._packs[key], self._next_block[key]  # its rows are all out; only the report is kept
            self._event(key).set()
        if mix is None:
            return rows
        assembler = self._assembler(stage_key, mix)
        changed = self._changed(stage_key)
        async with changed:
            if rows is not None:
                assembler.add(source, rows["tokens"])
                changed.notify_all()
            if not pack.done:  # a finished source has nothing more to hold back
                await changed.wait_for(lambda: stage_key in self._failed or assembler.finished
                                       or assembler.queued_rows(source) <= mix["budget_rows"][source])
        self._raise_if_failed(stage_key)
        return {"done": np.array([pack.done])}

    async def take(self, stage_key, mix: dict, index: int) -> dict:
        """Worker batch `index` of the stage build `stage_key` (0, 1, 2, ... in order), once its
        sources have packed the rows: {"tokens", "source"}. A step's batches (one per rank) are
        made together, so a failure of the stage reaches every rank at the same step: none is
        left inside a collective that another rank will never join."""
        self._raise_if_lost(stage_key)
        made = self._made.setdefault(stage_key, {})
        if index not in made:
            self._raise_if_failed(stage_key)
        assembler = self._assembler(stage_key, mix)
        first = index - index % assembler.world  # the step's first batch
        changed = self._changed(stage_key)
        async with changed:
            await changed.wait_for(lambda: index in made or stage_key in self._failed or assembler.next_batch > index
                                   or (assembler.next_batch == first and assembler.ready()))
            if index not in made:
                self._raise_if_failed(stage_key)
                if assembler.next_batch != first:
                    raise RuntimeError(f"batch {index} of a stage was asked for twice; the stage's read tasks must "
                                       "not be retried")
                for u in range(first, first + assembler.world):
                    made[u] = assembler.take()  # batch u: assembler.next_batch before the take
                changed.notify_all()
            batch = made.pop(index)
        if assembler.finished and not made:  # every row is out; later pack calls are in-flight blocks, answered done
            del self._mixes[stage_key], self._mix_changed[stage_key], self._made[stage_key]
        return batch

    def fail(self, stage_key, message: str) -> None:
        """A source of the stage failed, or the stage was superseded by a rebuild: every pack and
        take of it raises from now on (and those waiting wake up to raise)."""
        self._failed.setdefault(stage_key, message)
        for (key, source), event in self._events.items():  # a waiting `wait` raises too
            if key == stage_key and (key, source) not in self._reports:
                event.set()
        changed = self._mix_changed.get(stage_key)
        if changed is not None:
            asyncio.ensure_future(self._notify(changed))

    @staticmethod
    async def _notify(changed: asyncio.Condition) -> None:
        async with changed:
            changed.notify_all()

    def _raise_if_failed(self, stage_key) -> None:
        if stage_key in self._failed:
            raise RuntimeError(self._failed[stage_key])

    def _assembler(self, stage_key, mix: dict) -> BatchAssembler:
        if stage_key not in self._mixes:
            self._mixes[stage_key] = BatchAssembler(mix["schedule"], mix["world"], mix["source_ids"],
                                                    mix["start_step"])
        return self._mixes[stage_key]

    def _changed(self, stage_key) -> asyncio.Condition:
        return self._mix_changed.setdefault(stage_key, asyncio.Condition())

    async def wait(self, stage_key, sources: list[str]) -> dict[str, dict]:
        """{source: {"cursor": ..., "stats": ...}} once every source of the stage has ended.
        (Not refused after a restart: the coordinator asks for it as it builds, before `begin`,
        and a lost build's wait only waits; the workers' failure replaces that build.)"""
        for s in sources:
            self._raise_if_failed(stage_key)
            await self._event((stage_key, s)).wait()
        self._raise_if_failed(stage_key)
        return {s: self._reports[(stage_key, s)] for s in sources}


