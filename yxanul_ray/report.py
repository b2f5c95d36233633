"""End-of-run output: the summary table (realised mix per stage, in tokens) and the loss plot."""

from __future__ import annotations

from yxanul_ray.checkpoint import TrainState
from yxanul_ray.specs import JobSpec


def final_summary(job: JobSpec, state: TrainState, stats: dict[str, dict]) -> str:
    names = list(job.sources)
    lines = ["=" * 60, f"REACHED TARGET: {state.tokens:,} tokens in {state.step:,} steps "
             f"(target {job.curriculum.target_tokens:,})", "realised mix per stage (trained tokens):",
             f"  {'stage':<24}{'tokens':>12}  " + "  ".join(f"{n:>18}" for n in names)]
    for k, st in enumerate(job.curriculum.stages):
        mix = state.stage_tokens_by_source[k] if k < len(state.stage_tokens_by_source) else {}
        total = sum(mix.values())
        cells = "  ".join(f"{mix.get(n, 0):>9,} {mix.get(n, 0) / max(1, total):>6.1%}/{st.mix.get(n, 0):<3.0%}"
                          for n in names)
        lines.append(f"  {k + 1:>2} {st.name[:21]:<21}{total:>12,}  {cells}")
    distinct = sum(s.get("distinct_tokens", 0) for s in stats.values())
    lines.append(f"trained tokens: {state.tokens:,}; distinct source tokens consumed: {distinct:,} (includes the "
                 "positions masked at stage ends)")
    for name, s in stats.items():
        bad = ", ".join(f"{k} {v}" for k, v in sorted(s.get("bad", {}).items())) or "none"
        lines.append(f"  {name}: {s.get('documents', 0):,} documents, {s.get('eos', 0):,} EOS, "
                     f"{s.get('wraps', 0)} wrap(s), skipped/split rows: {bad}")
    if state.validation:
        last = state.validation[-1]["loss"]
        lines.append("final validation loss: " + ", ".join(f"{s} {v:.4f}" for s, v in last.items()))
    lines.append("=" * 60)
    return "\n".join(lines)


def plot_loss(job: JobSpec, state: TrainState, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    if state.loss_history:
        xs, ys = zip(*state.loss_history)
        ax.plot(xs, ys, label="train loss", color="tab:blue")
    sources = sorted({s for v in state.validation for s in v["loss"]})
    for i, source in enumerate(sources):  # held-out loss per domain, one colour each
        pts = [(v["tokens"], v["loss"][source]) for v in state.validation if source in v["loss"]]
        ax.plot(*zip(*pts), "o--", ms=4, lw=0.8, color=f"C{i + 1}", label=f"validation: {source}")
    boundary = 0
    for k, st in enumerate(job.curriculum.stages):
        boundary += st.tokens
        ax.axvline(boundary, color="grey", lw=0.6, ls="--")
        ax.text(boundary, ax.get_ylim()[1] if state.loss_history else 1.0, f" {k + 1}", fontsize=7, va="top")
    ax.set_xlabel("trained tokens")
    ax.set_ylabel("loss")
    ax.set_title(f"{job.run.name}: loss by tokens (dashed: stage ends)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
