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
"""

from __future__ import annotations

import asyncio

import ray


@ray.remote(num_cpus=0)
class StagePackers:
    def __init__(self) -> None:
        self._packs: dict[tuple, object] = {}
        self._reports: dict[tuple, dict] = {}
        self._events: dict[tuple, asyncio.Event] = {}

    def _event(self, key: tuple) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def pack(self, stage_key, source: str, config: dict, batch) -> dict | None:
        """Pack one block of `source`'s tokenized documents for the stage build `stage_key`;
        the first block of a key starts its packer from `config` (sources.Pack's arguments).
        Returns the rows that became complete, or None."""
        from yxanul_ray.sources import Pack

        key = (stage_key, source)
        pack = self._packs.get(key)
        if pack is None:
            if key in self._reports:  # blocks still in flight when the stage's rows were all made
                return None
            pack = self._packs[key] = Pack(**config)
        rows = pack(batch)
        if pack.done:
            self._reports[key] = pack.end_report()
            del self._packs[key]  # its rows are all out; only the report is kept
            self._event(key).set()
        return rows

    async def wait(self, stage_key, sources: list[str]) -> dict[str, dict]:
        """{source: {"cursor": ..., "stats": ...}} once every source of the stage has ended."""
        for s in sources:
            await self._event((stage_key, s)).wait()
        return {s: self._reports[(stage_key, s)] for s in sources}
