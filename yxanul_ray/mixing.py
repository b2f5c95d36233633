"""Exact, deterministic per-batch mixing of packed rows (pure).

Every source is packed to rows of the same length first, so rows are tokens and a row ratio
is a token ratio. Each global step of B rows takes floor(w_s * B) rows of source s, and the
B - sum(floor) leftover rows go to the sources furthest behind their cumulative target (a
deficit round-robin). So every step is within one row of each source's share, the stage total
is within one row of it, and neither depends on how many workers share the steps: each rank
takes a contiguous slice of the step's rows (BatchAssembler), so a run resized or resumed on
another worker count trains the same batches.

Ray Data's own `Dataset.mix` balances blocks, not batches, and `streaming_split` hands blocks to
workers dynamically, so neither alone can hold a worker's batch to one row; drawing each
source's rows from its own split at these counts can.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from yxanul_ray.curriculum import StagePlan


@dataclass(frozen=True)
class MixSchedule:
    """Global row counts per source for every step of one stage (all workers together)."""

    sources: tuple[str, ...]
    """Sources with a positive weight, in config order."""
    weights: tuple[float, ...]
    step_rows: tuple[int, ...]
    """Rows in each step of the stage, all workers together."""

    def counts(self) -> Iterator[dict[str, int]]:
        given = [0] * len(self.sources)
        target = [0.0] * len(self.sources)
        for rows in self.step_rows:
            base = [math.floor(w * rows + 1e-9) for w in self.weights]
            for i, w in enumerate(self.weights):
                target[i] += w * rows
            extra = rows - sum(base)
            # Largest deficit after the base share first; ties go to config order (stable sort).
            deficit = sorted(range(len(base)), key=lambda i: -(target[i] - given[i] - base[i]))
            for i in deficit[:extra]:
                base[i] += 1
            for i, n in enumerate(base):
                given[i] += n
            yield dict(zip(self.sources, base))

    def totals(self, first_step: int = 0, end_step: int | None = None) -> dict[str, int]:
        """Rows taken from each source over steps [first_step, end_step)."""
        totals = dict.fromkeys(self.sources, 0)
        for i, step in enumerate(self.counts()):
            if end_step is not None and i >= end_step:
                break
            if i >= first_step:
                for s, n in step.items():
                    totals[s] += n
        return totals


def build_schedule(mix: dict[str, float], plan: StagePlan) -> MixSchedule:
    active = [(s, w) for s, w in mix.items() if w > 0]
    step_rows = [plan.rows_per_step] * plan.full_steps
    if plan.last_rows:
        step_rows.append(plan.last_rows)
    return MixSchedule(tuple(s for s, _ in active), tuple(w for _, w in active), tuple(step_rows))


def rows_per_rank(step_rows: int, world: int) -> int:
    """Rows of one rank's batch in a step of `step_rows` rows: its even share, rounded up (the
    last ranks' batches end in padding rows where the step does not divide)."""
    return -(-step_rows // world)


PAD_SOURCE = -1
"""The source id of a padding row: wholly masked (its positions lie past the step's valid targets)."""


class BatchAssembler:
    """A stage's worker batches, assembled in order from its sources' packed rows (pure).

    Rows arrive per source in stream order, interleaved however the pipelines run. Step k's rows
    are its schedule counts, sources in config order, whatever the world size; batch u is rank
    u % world's contiguous slice of step (start_step + u // world), so the ranks' batches joined
    in rank order are the step. A step that does not divide among the ranks (a stage's last,
    smaller step) is padded at its end with rows of zeros from PAD_SOURCE, past its valid targets."""

    def __init__(self, schedule: MixSchedule, world: int, source_ids: dict[str, int], start_step: int = 0):
        self.steps = [c for c in schedule.counts()][start_step:]
        self.world = world
        self.source_ids = source_ids
        self.next_batch = 0
        self._queues: dict[str, list] = {s: [] for s in schedule.sources}
        self._queued: dict[str, int] = dict.fromkeys(schedule.sources, 0)
        self._step: dict | None = None
        """The current step's rows, padded, while its ranks' batches are taken."""

    @property
    def total_batches(self) -> int:
        return len(self.steps) * self.world

    @property
    def finished(self) -> bool:
        return self.next_batch >= self.total_batches

    def add(self, source: str, rows) -> None:
        if len(rows):
            self._queues[source].append(rows)
            self._queued[source] += len(rows)

    def queued_rows(self, source: str) -> int:
        return self._queued[source]

    def missing(self) -> dict[str, int]:
        """Rows still missing per source before the next batch can be taken."""
        if self.finished or self.next_batch % self.world:
            return {}  # inside a step: its rows are all here
        need = self.steps[self.next_batch // self.world]
        return {s: n - self._queued[s] for s, n in need.items() if n > self._queued[s]}

    def ready(self) -> bool:
        """Whether the next batch can be taken: its whole step's rows are here."""
        return not self.finished and not self.missing()

    def take(self) -> dict:
        """The next batch {"tokens": [rows, seq_len+1], "source": [rows] int16}."""
        assert self.ready(), "take() before ready()"
        rank = self.next_batch % self.world
        if rank == 0:
            self._step = self._assemble(self.steps[self.next_batch // self.world])
        per_rank = len(self._step["tokens"]) // self.world
        batch = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in self._step.items()}
        self.next_batch += 1
        if self.next_batch % self.world == 0:
            self._step = None
        return batch

    def _assemble(self, counts: dict[str, int]) -> dict:
        tokens, sources = [], []
        for s, n in counts.items():
            if n:
                tokens.append(self._pop(s, n))
                sources.append(np.full(n, self.source_ids[s], dtype=np.int16))
        rows = sum(len(t) for t in tokens)
        pad = rows_per_rank(rows, self.world) * self.world - rows
        if pad:
            tokens.append(np.zeros((pad, tokens[0].shape[1]), dtype=tokens[0].dtype))
            sources.append(np.full(pad, PAD_SOURCE, dtype=np.int16))
        return {"tokens": np.concatenate(tokens), "source": np.concatenate(sources)}

    def _pop(self, source: str, n: int):
        queue, parts = self._queues[source], []
        while n:
            head = queue[0]
            if len(head) <= n:
                parts.append(queue.pop(0))
                n -= len(head)
            else:
                parts.append(head[:n])
                queue[0] = head[n:]
                n = 0
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._queued[source] -= len(rows)
        return rows
