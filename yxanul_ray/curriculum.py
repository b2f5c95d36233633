"""Pure curriculum arithmetic: stage boundaries, step plans, the LR schedule, time estimates.

Every rank computes these alike from the spec, so stage switches need no coordination: the
global token count after step k is a sum of known step sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from yxanul_ray.specs import CurriculumSpec, OptimizerSpec, StageSpec


@dataclass(frozen=True)
class StagePlan:
    """How one stage's token budget becomes optimizer steps (the same for any number of workers)."""

    index: int
    seq_len: int
    tokens: int
    start_tokens: int
    """Global trained tokens before the stage's first step."""
    rows_per_step: int
    """Global sequences per full step."""
    full_steps: int
    last_rows: int
    """Sequences in a final, smaller step (0 when the budget is a whole number of steps)."""
    last_masked_tokens: int
    """Target positions of the final step that are masked so the stage ends exactly on budget."""

    @property
    def steps(self) -> int:
        return self.full_steps + (1 if self.last_rows else 0)

    @property
    def end_tokens(self) -> int:
        return self.start_tokens + self.tokens

    @property
    def rows(self) -> int:
        return self.full_steps * self.rows_per_step + self.last_rows

    def step_rows(self, step_in_stage: int) -> int:
        return self.rows_per_step if step_in_stage < self.full_steps else self.last_rows

    def step_tokens(self, step_in_stage: int) -> int:
        """Trained (unmasked) target positions in one step of this stage."""
        if step_in_stage < self.full_steps:
            return self.rows_per_step * self.seq_len
        return self.last_rows * self.seq_len - self.last_masked_tokens


def plan_stage(stage: StageSpec, index: int, start_tokens: int) -> StagePlan:
    """Split a stage budget into full steps plus, if needed, one smaller step whose last target
    positions are masked, so the stage ends exactly on budget. The same for any number of
    workers: which rows form each step never depends on how they are split (mixing.BatchAssembler
    pads a last step that does not divide among the workers with rows that are wholly masked)."""
    step_tokens = stage.step_tokens
    full_steps, remainder = divmod(stage.tokens, step_tokens)
    last_rows = masked = 0
    if remainder:
        last_rows = math.ceil(remainder / stage.seq_len)
        masked = last_rows * stage.seq_len - remainder
    return StagePlan(index, stage.seq_len, stage.tokens, start_tokens, stage.global_batch, full_steps,
                     last_rows, masked)


def plan_curriculum(cur: CurriculumSpec) -> list[StagePlan]:
    plans, start = [], 0
    for i, stage in enumerate(cur.stages):
        plans.append(plan_stage(stage, i, start))
        start += stage.tokens
    return plans


def check_world_size(cur: CurriculumSpec, world_size: int) -> None:
    """Raise ValueError naming the first stage whose batch does not divide among `world_size`
    workers (each full step's rows are split evenly; DDP's all-reduce needs every rank's step)."""
    for stage in cur.stages:
        if stage.global_batch % world_size:
            raise ValueError(
                f"stage {stage.name!r}: batch of {stage.global_batch} sequences does not divide among "
                f"{world_size} workers; choose a batch that is a multiple of the worker count"
            )


def lr_at(opt: OptimizerSpec, target_tokens: int, tokens_done: int, lr_scale: float = 1.0) -> float:
    """Learning rate by trained tokens: linear warmup, then decay over the whole target.

    Following tokens rather than steps keeps the schedule continuous when batch size and seq_len
    change between stages (the predecessor's step-based schedule hit zero at 2/3 of the run).
    """
    peak = opt.peak_lr * lr_scale
    floor = peak * opt.min_lr_ratio
    if opt.warmup_tokens and tokens_done < opt.warmup_tokens:
        return peak * (tokens_done + 1) / opt.warmup_tokens
    if opt.decay == "constant":
        return peak
    span = max(1, target_tokens - opt.warmup_tokens)
    progress = min(1.0, max(0.0, (tokens_done - opt.warmup_tokens) / span))
    if opt.decay == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_tokens_per_s(seq_len: int) -> float:
    """The user's RTX 4090 figures: stages 1-4 (seq <= 64) 150k tok/s, 5-7 (<= 512) 100k, then 50k."""
    if seq_len <= 64:
        return 150_000.0
    if seq_len <= 512:
        return 100_000.0
    return 50_000.0


def estimate_stage_seconds(stage: StageSpec) -> float:
    rate = stage.estimate_tokens_per_s or default_tokens_per_s(stage.seq_len)
    return stage.tokens / rate
