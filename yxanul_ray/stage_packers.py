"""One actor per run that packs every stage's sources and records where each stopped.

Packing carries a document's tail from one block into the next, so each (stage, source) stream
needs one holder of state that sees its blocks in order. Ray Data's way to hold state is an
actor pool per map step, and a new pool per Dataset: one fresh worker process per stage and
source. On the 2-core demo those starts (~0.8 CPU-s each, plus the raylet's share and the
packer's imports) were a large part of the data side's CPU, taken from training. Here the
state lives in this long-lived actor instead, keyed by (stage build, source); the Dataset's pack
step is a plain task (one at a time, in stream order) that hands each block over and returns
the rows. The end of each stream (cursor and stats) is recorded here too, for whoever plans the
next stage (the coordinator, or a test). An async actor, so waiting for an end costs no thread.

Ray restarts it if it dies. Its state is then gone, so every block carries its place in the
stream (the pack task's index): a restarted actor refuses a stream it did not see begin, and
that stage fails and is rebuilt from its start cursor like any failed stage, instead of packing
the rest of a stream as if it were the start.
"""

from __future__ import annotations

import asyncio

import ray

from yxanul_ray.sources import Pack


@ray.remote(num_cpus=0, max_restarts=-1)
class StagePackers:
    def __init__(self) -> None:
        self._packs: dict[tuple, object] = {}
        self._next_block: dict[tuple, int] = {}
        self._reports: dict[tuple, dict] = {}
        self._events: dict[tuple, asyncio.Event] = {}

    def _event(self, key: tuple) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def pack(self, stage_key, config: dict, batch, block_index: int | None) -> dict | None:
        """Pack block `block_index` (0, 1, 2, ... in stream order; None where Ray Data does not
        say) of a source's tokenized documents for the stage build `stage_key`; `config` is
        sources.Pack's arguments (the source among them), and block 0 starts the packer from
        it. Returns the rows that became complete, or None."""
        source = config["source"]
        key = (stage_key, source)
        pack = self._packs.get(key)
        if pack is None:
            if key in self._reports:  # blocks still in flight when the stage's rows were all made
                return None
            if block_index:
                raise RuntimeError(
                    f"source {source}: block {block_index} of a stage's stream reached a packer that never saw the "
                    "stream begin (the StagePackers actor restarted); the stage is rebuilt from its start cursor")
            pack = self._packs[key] = Pack(**config)
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
        return rows

    async def wait(self, stage_key, sources: list[str]) -> dict[str, dict]:
        """{source: {"cursor": ..., "stats": ...}} once every source of the stage has ended."""
        for s in sources:
            await self._event((stage_key, s)).wait()
        return {s: self._reports[(stage_key, s)] for s in sources}
