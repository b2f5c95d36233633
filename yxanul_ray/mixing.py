"""Exact, deterministic per-batch mixing of packed rows (pure).

Every source is packed to rows of the same length first, so rows are tokens and a row ratio
is a token ratio. Each worker batch of B rows takes floor(w_s * B) rows of source s, and the
B - sum(floor) leftover rows go to the sources furthest behind their cumulative target (a
deficit round-robin). So every worker batch is within one row of each source's share, the
stage total is within one row per worker of it, and the schedule is the same on every rank.

Ray Data's own `Dataset.mix` balances blocks, not batches, and `streaming_split` hands blocks to
workers dynamically, so neither alone can hold a worker's batch to one row; drawing each
source's rows from its own split at these counts can.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from yxanul_ray.curriculum import StagePlan


@dataclass(frozen=True)
class MixSchedule:
    """Per-worker row counts per source for every step of one stage."""

    sources: tuple[str, ...]
    """Sources with a positive weight, in config order."""
    weights: tuple[float, ...]
    step_rows: tuple[int, ...]
    """Rows per worker in each step of the stage."""

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

    def totals_per_worker(self, first_step: int = 0, end_step: int | None = None) -> dict[str, int]:
        """Rows each worker takes from each source over steps [first_step, end_step)."""
        totals = dict.fromkeys(self.sources, 0)
        for i, step in enumerate(self.counts()):
            if end_step is not None and i >= end_step:
                break
            if i >= first_step:
                for s, n in step.items():
                    totals[s] += n
        return totals


def build_schedule(mix: dict[str, float], plan: StagePlan, world_size: int) -> MixSchedule:
    active = [(s, w) for s, w in mix.items() if w > 0]
    step_rows = [plan.rows_per_step // world_size] * plan.full_steps
    if plan.last_rows:
        step_rows.append(plan.last_rows // world_size)
    return MixSchedule(tuple(s for s, _ in active), tuple(w for _, w in active), tuple(step_rows))
