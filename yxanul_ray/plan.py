"""The `plan` report: the stage table, totals, warnings and a wall-time estimate, before any run."""

from __future__ import annotations

from yxanul_ray.curriculum import estimate_stage_seconds, lr_at, plan_curriculum
from yxanul_ray.presets import count_params
from yxanul_ray.specs import JobSpec, stage_overlap, stage_stride


def format_duration(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def plan_warnings(job: JobSpec) -> list[str]:
    out = []
    cur = job.curriculum
    for i, st in enumerate(cur.stages):
        stride = stage_stride(cur, st)
        if stride < st.seq_len:
            distinct = st.tokens * stride // st.seq_len
            out.append(
                f"stage {i + 1} ({st.name}): overlap {stage_overlap(cur, st):.0%} trains {st.tokens:,} "
                f"target positions from only ~{distinct:,} distinct source tokens"
            )
        for workers in sorted({job.run.min_workers, job.run.max_workers}):
            if st.global_batch % workers:
                out.append(f"stage {i + 1} ({st.name}): batch {st.global_batch} does not divide among "
                           f"{workers} workers")
    prev = None
    for i, st in enumerate(cur.stages):
        if prev is not None and st.step_tokens > 2 * prev:
            out.append(f"stage {i + 1} ({st.name}): tokens per step jump {prev:,} -> {st.step_tokens:,}; "
                       "consider lr_scale or a smoother batch schedule")
        prev = st.step_tokens
    if job.optimizer.warmup_tokens > cur.target_tokens:
        out.append("optimizer.warmup_tokens exceeds the target: the LR never reaches its peak")
    return out


def render_plan(job: JobSpec) -> str:
    """The plan as text. Raises ValueError when a stage's batch cannot be split across workers."""
    cur, opt = job.curriculum, job.optimizer
    workers = job.run.workers if not job.run.elastic else f"{job.run.min_workers}-{job.run.max_workers}"
    # A batch that does not split across the workers is a warning here (the run itself refuses it).
    plans = plan_curriculum(cur)
    names = list(job.sources)
    shape = job.model.shape
    lines = [
        f"Plan for {job.path} ({job.run.name})",
        f"model: {job.model.preset} ({count_params(shape) / 1e6:.1f}M parameters, d_model {shape.d_model}, "
        f"{shape.n_layers} layers), workers: {workers} ({'GPU' if job.run.use_gpu else 'CPU'})",
        f"sources: {', '.join(f'{n} ({s.hf or s.path})' for n, s in job.sources.items())}",
        "",
    ]
    header = (f"{'#':>2}  {'stage':<22} {'seq_len':>7} {'tokens':>13}  {'mix ' + '/'.join(names):<20} "
              f"{'batch':>6} {'tokens/step':>11} {'steps':>7} {'LR at start':>11} {'est. time':>9}")
    lines += [header, "-" * len(header)]
    total_steps, total_s = 0, 0.0
    for i, (st, p) in enumerate(zip(cur.stages, plans)):
        mix = "/".join(f"{st.mix.get(n, 0.0) * 100:g}" for n in names)
        lr = lr_at(opt, cur.target_tokens, p.start_tokens, st.lr_scale)
        secs = estimate_stage_seconds(st)
        total_steps += p.steps
        total_s += secs
        lines.append(
            f"{i + 1:>2}  {st.name[:22]:<22} {st.seq_len:>7} {st.tokens:>13,}  {mix:<20} "
            f"{st.global_batch:>6} {st.step_tokens:>11,} {p.steps:>7,} {lr:>11.2e} {format_duration(secs):>9}"
        )
    lines += [
        "-" * len(header),
        f"total: {len(cur.stages)} stages, {cur.target_tokens:,} tokens, {total_steps:,} optimizer steps, "
        f"estimated {format_duration(total_s)} ({total_s / 3600:.2f} h)",
        f"LR: peak {opt.peak_lr:.2e}, warmup {opt.warmup_tokens:,} tokens, {opt.decay} decay to "
        f"{opt.min_lr_ratio:g} x peak over the whole target",
        "estimate: per-stage estimate_tokens_per_s, else the user's RTX 4090 figures "
        "(150k tok/s at seq <= 64, 100k at <= 512, 50k above)",
    ]
    warnings = plan_warnings(job)
    if warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)
