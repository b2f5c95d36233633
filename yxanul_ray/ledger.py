"""Where each stage's sources stopped: reported by the packers, awaited by whoever plans the
next stage (the coordinator, or a test). An async actor, so waiting costs no thread."""

from __future__ import annotations

import asyncio

import ray


@ray.remote(num_cpus=0)
class StageLedger:
    def __init__(self) -> None:
        self._reports: dict[tuple, dict] = {}
        self._events: dict[tuple, asyncio.Event] = {}

    def _event(self, key: tuple) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def report(self, stage_key, source: str, payload: dict) -> None:
        self._reports[(stage_key, source)] = payload
        self._event((stage_key, source)).set()

    async def wait(self, stage_key, sources: list[str]) -> dict[str, dict]:
        """{source: {"cursor": ..., "stats": ...}} once every source of the stage has reported."""
        for s in sources:
            await self._event((stage_key, s)).wait()
        return {s: self._reports[(stage_key, s)] for s in sources}
