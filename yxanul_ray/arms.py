"""The arms of a curriculum comparison, derived from a config's curriculum (pure).

Every arm trains the same model from the same initial weights (per seed), with the same LR
schedule by tokens, the same precision and the same held-out documents; the arms differ only in
what they are named for:

- `curriculum`: the config as written.
- `flat`: every stage at the last stage's seq_len, with the curriculum's token-weighted average
  mix, and each stage's tokens per step (rounded to whole rows, a multiple of the worker count),
  so the two arms take about as many optimizer steps at the same token points; a flat arm at
  one batch size would measure batch size, not the curriculum.
- `seq-only`: the seq_len ladder with the average mix.
- `mix-only`: the flat seq_len (and batches) with the mix ladder.
- `compressed:F`: the curriculum with every stage budget, the warmup and so the LR schedule
  scaled to F x the target: whether it reaches the flat arm's final loss with fewer tokens.

Consecutive stages an arm leaves identical are merged, so it pays no stage switch it does not need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from yxanul_ray.config import job_from_dict, scaled_budgets
from yxanul_ray.specs import CurriculumSpec, JobSpec, StageSpec

KINDS = ("curriculum", "flat", "seq-only", "mix-only", "compressed")


@dataclass(frozen=True)
class Arm:
    kind: str
    scale: float = 1.0
    """compressed's F: the share of the target it trains."""

    @property
    def name(self) -> str:
        return f"compressed:{self.scale:g}" if self.kind == "compressed" else self.kind


def parse_arms(text: str) -> list[Arm]:
    """`curriculum,flat,compressed:0.75` as Arms; ValueError naming what is wrong. `flat` is
    added when missing: every figure is read against it."""
    arms: list[Arm] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, arg = item.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{item!r} is not an arm; arms: {', '.join(KINDS[:-1])}, compressed:F (0 < F <= 1)")
        if kind == "compressed":
            try:
                scale = float(arg)
            except ValueError:
                raise ValueError(f"{item!r}: compressed takes a scale, e.g. compressed:0.75") from None
            if not 0 < scale <= 1:
                raise ValueError(f"{item!r}: the scale must be in (0, 1], got {scale:g}")
            arm = Arm(kind, scale)
        elif arg:
            raise ValueError(f"{item!r}: only compressed takes a value (compressed:0.75)")
        else:
            arm = Arm(kind)
        if arm not in arms:
            arms.append(arm)
    if not arms:
        raise ValueError("no arms given; e.g. curriculum,flat,compressed:0.75")
    if Arm("flat") not in arms:
        arms.insert(0, Arm("flat"))
    return arms


def average_mix(stages: list[StageSpec]) -> dict[str, float]:
    """The curriculum's token-weighted average mix: what a flat arm trains on throughout, so the
    arms see the same amount of each source and differ in order only."""
    total = sum(st.tokens for st in stages)
    names = list(dict.fromkeys(name for st in stages for name in st.mix))
    return {name: sum(st.tokens * st.mix.get(name, 0.0) for st in stages) / total for name in names}


def scale_job(job: JobSpec, factor: float) -> JobSpec:
    """`job` with every stage budget, the target and the warmup times `factor`: the same
    curriculum and LR schedule, over fewer (or more) tokens."""
    cur = job.curriculum
    budgets = scaled_budgets([st.tokens for st in cur.stages], round(cur.target_tokens * factor))
    if min(budgets) < 1:
        raise ValueError(f"scaled by {factor:g}, the {len(budgets)} stages have too few tokens to share")
    stages = [dataclasses.replace(st, tokens=n) for st, n in zip(cur.stages, budgets)]
    opt = dataclasses.replace(job.optimizer, warmup_tokens=round(job.optimizer.warmup_tokens * factor))
    return dataclasses.replace(job, optimizer=opt,
                               curriculum=dataclasses.replace(cur, stages=stages, target_tokens=sum(budgets)))


def flat_rows(stage: StageSpec, seq_len: int, world: int) -> int:
    """Sequences of `seq_len` per step that carry about `stage`'s tokens per step: whole rows, a
    multiple of the worker count, at least one per worker."""
    per_worker = round(stage.step_tokens / (seq_len * world))
    return max(1, per_worker) * world


def arm_stages(cur: CurriculumSpec, arm: Arm, world: int) -> list[StageSpec]:
    """The stages `arm` trains (compressed's scaling is scale_job's)."""
    stages, last = cur.stages, cur.stages[-1]
    flat_len = arm.kind in ("flat", "mix-only")
    avg_mix = arm.kind in ("flat", "seq-only")
    mix = average_mix(stages)
    out = []
    for st in stages:
        changes: dict = {}
        if flat_len:
            changes.update(seq_len=last.seq_len, batch_size=flat_rows(st, last.seq_len, world), tokens_per_step=None,
                           micro_batch_size=last.micro_batch_size, overlap=last.overlap)
        if avg_mix:
            changes.update(mix=dict(mix))
        out.append(dataclasses.replace(st, **changes))
    return merge_identical(out)


def merge_identical(stages: list[StageSpec]) -> list[StageSpec]:
    """Consecutive stages that train alike (all but name, budget and banner) as one, named for
    its first and last, so a derived arm pays no stage switch it does not need."""
    def key(st: StageSpec) -> tuple:
        d = dataclasses.asdict(st)
        for k in ("name", "tokens", "focus", "estimate_tokens_per_s"):
            d.pop(k)
        return tuple(sorted((k, repr(v)) for k, v in d.items()))

    out: list[StageSpec] = []
    first_name = ""
    for st in stages:
        if out and key(out[-1]) == key(st):
            out[-1] = dataclasses.replace(out[-1], name=f"{first_name} .. {st.name}", tokens=out[-1].tokens + st.tokens)
        else:
            first_name = st.name
            out.append(st)
    return out


def arm_job(base: JobSpec, arm: Arm, seed_index: int) -> JobSpec:
    """The job that trains `arm` for seed index `seed_index` (run.seed + index: the initial
    weights every arm of that index shares), validated as any config is."""
    job = scale_job(base, arm.scale) if arm.kind == "compressed" else base
    cur = job.curriculum
    stages = cur.stages if arm.kind in ("curriculum", "compressed") else arm_stages(cur, arm, job.run.max_workers)
    slug = arm.name.replace(":", "")
    run = dataclasses.replace(job.run, name=f"{base.run.name}-{slug}-seed{seed_index}", seed=base.run.seed + seed_index)
    job = dataclasses.replace(job, run=run, curriculum=dataclasses.replace(cur, stages=stages))
    return job_from_dict(_plain(job), f"{base.path} ({arm.name})")


def _plain(job: JobSpec) -> dict:
    d = job.to_dict()
    d.pop("path", None)
    for src in d["sources"].values():
        src.pop("name", None)
    return d
