"""A curriculum comparison's figures, table, verdict and plot, from each arm's validation records
(pure, but for the plot).

Each run's records (TrainState.validation) become losses at matched token points (every
`every` tokens from 0, and at the run's end); the mean loss is the unweighted mean over the
domains. Each arm's reach is the tokens and training seconds at which its mean loss first
reaches the flat arm's final mean loss of the same seed (interpolated linearly between points),
and its ratios are those over the flat arm's own reach of that loss, so the flat arm's are 1.0.
A difference is claimed only beyond 3x the seed-to-seed spread with the same sign in every seed;
with one seed, only from MIN_CLAIM_ONE_SEED nats on, and the verdict says it had one seed.
"""

from __future__ import annotations

import statistics

MIN_CLAIM_ONE_SEED = 0.015
"""Nats: the smallest difference claimed from one seed (seed spreads at small scale are of the
order of 0.002-0.005 nats)."""
SPREAD_FACTOR = 3.0


def matched_points(records: list[dict], every: int, target: int) -> list[dict]:
    """The run's validation at each token point (0, every, 2 x every, ... and its target): the
    first record at or past the point. {"point", "tokens", "seconds", "loss", "mean"} each."""
    records = sorted(records, key=lambda r: r["tokens"])
    points = list(range(0, target + 1, every)) if every > 0 else [0]
    if points[-1] != target:
        points.append(target)
    out = []
    for p in points:
        rec = next((r for r in records if r["tokens"] >= p), None)
        if rec is None:
            raise ValueError(f"no validation record at or past {p:,} tokens (the last at "
                             f"{records[-1]['tokens'] if records else 0:,})")
        out.append({"point": p, "tokens": rec["tokens"], "seconds": rec.get("seconds", 0.0), "loss": rec["loss"],
                    "mean": statistics.fmean(rec["loss"].values())})
    return out


def reach(points: list[dict], threshold: float) -> tuple[float, float] | None:
    """(tokens, seconds) where the mean loss first reaches `threshold`, linear between the point
    before and the first point at or below it; None if it never does."""
    for i, p in enumerate(points):
        if p["mean"] <= threshold:
            if i == 0:
                return float(p["tokens"]), float(p["seconds"])
            q = points[i - 1]
            f = (q["mean"] - threshold) / (q["mean"] - p["mean"]) if q["mean"] != p["mean"] else 1.0
            return (q["tokens"] + f * (p["tokens"] - q["tokens"]), q["seconds"] + f * (p["seconds"] - q["seconds"]))
    return None


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per arm, over seeds (runs[arm][i] is seed index i, each with "points"): the final mean
    loss per seed and each reach of the flat arm's final loss, with its ratios to the flat
    arm's own (None where the arm never reaches it)."""
    flat = runs["flat"]
    out = {}
    for arm, seeds in runs.items():
        finals, tokens, seconds, t_ratio, s_ratio = [], [], [], [], []
        for i, run in enumerate(seeds):
            threshold = flat[i]["points"][-1]["mean"]
            mine, theirs = reach(run["points"], threshold), reach(flat[i]["points"], threshold)
            finals.append(run["points"][-1]["mean"])
            tokens.append(mine and mine[0])
            seconds.append(mine and mine[1])
            t_ratio.append(mine[0] / theirs[0] if mine and theirs[0] else None)
            s_ratio.append(mine[1] / theirs[1] if mine and theirs[1] else None)
        out[arm] = {"final_mean": finals, "final_loss": [r["points"][-1]["loss"] for r in seeds],
                    "train_seconds": [r["train_seconds"] for r in seeds],
                    "trained_tokens": [r["tokens"] for r in seeds],
                    "reach_tokens": tokens, "reach_seconds": seconds, "tokens_ratio": t_ratio,
                    "seconds_ratio": s_ratio, "tokens_ratio_mean": _mean(t_ratio), "seconds_ratio_mean": _mean(s_ratio)}
    return out


def seed_spread(summary: dict[str, dict]) -> float | None:
    """The seed-to-seed spread: the largest standard deviation over seeds of any arm's final mean
    loss (None with one seed)."""
    spreads = [statistics.stdev(s["final_mean"]) for s in summary.values() if len(s["final_mean"]) > 1]
    return max(spreads) if spreads else None


def verdict(summary: dict[str, dict]) -> list[str]:
    """One line per arm against flat: a difference claimed only where it clears the noise."""
    spread = seed_spread(summary)
    flat = summary["flat"]["final_mean"]
    seeds = len(flat)
    lines = []
    if spread is None:
        lines.append(f"one seed: no spread measured, so nothing under {MIN_CLAIM_ONE_SEED} nats is claimed")
        bar = MIN_CLAIM_ONE_SEED
    else:
        bar = SPREAD_FACTOR * spread
        lines.append(f"{seeds} seeds: the spread of a final mean loss over seeds is {spread:.4f} nats, so a difference "
                     f"is claimed from {bar:.4f} on, with the same sign in every seed")
    for arm, s in summary.items():
        if arm == "flat":
            continue
        diffs = [a - b for a, b in zip(s["final_mean"], flat)]
        mean = statistics.fmean(diffs)
        same_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
        what = "its final" if not arm.startswith("compressed") else f"its final (at {arm.split(':')[1]}x the tokens)"
        head = (f"{arm}: {what} mean held-out loss {statistics.fmean(s['final_mean']):.4f} against flat's "
                f"{statistics.fmean(flat):.4f} ({mean:+.4f})")
        if abs(mean) > bar and same_sign:
            better = mean < 0
            claim = "better than flat" if better else "worse than flat"
            reached = s["tokens_ratio_mean"]
            if better and reached is not None:
                claim += (f"; it reaches flat's final loss at {reached:.2f}x the tokens and "
                          f"{s['seconds_ratio_mean']:.2f}x the training time")
            lines.append(f"{head}: {claim}")
        else:
            why = "signs differ between seeds" if not same_sign else f"within {bar:.4f}"
            lines.append(f"{head}: no difference claimed ({why})")
    return lines


def table(summary: dict[str, dict], sources: list[str]) -> str:
    """The comparison as a plain-text table (means over seeds, spread where there are several)."""
    head = (f"{'arm':<18}{'final mean':>14}" + "".join(f"{s:>10}" for s in sources)
            + f"{'tokens to flat final':>22}{'time to flat final':>20}{'train s':>10}")
    lines = [head, "-" * len(head)]
    for arm, s in summary.items():
        fm = s["final_mean"]
        final = f"{statistics.fmean(fm):.4f}" + (f"±{statistics.stdev(fm):.4f}" if len(fm) > 1 else "")
        per = "".join(f"{statistics.fmean(loss[src] for loss in s['final_loss']):>10.4f}" for src in sources)
        lines.append(f"{arm:<18}{final:>14}{per}{_ratio(s['tokens_ratio']):>22}{_ratio(s['seconds_ratio']):>20}"
                     f"{statistics.fmean(s['train_seconds']):>10.1f}")
    return "\n".join(lines)


def _ratio(values: list[float | None]) -> str:
    if any(v is None for v in values):
        reached = sum(v is not None for v in values)
        return f"never ({reached}/{len(values)} seeds)" if reached < len(values) else "never"
    return f"{statistics.fmean(values):.3f}x"


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(values)


def plot(runs: dict[str, list[dict]], path: str, title: str) -> str:
    """Mean held-out loss against trained tokens and against training seconds, a line per arm
    (the mean over seeds) and the seeds' range as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for i, (arm, seeds) in enumerate(runs.items()):
        n = min(len(r["points"]) for r in seeds)
        means = [[r["points"][k]["mean"] for r in seeds] for k in range(n)]
        y = [statistics.fmean(m) for m in means]
        lo, hi = [min(m) for m in means], [max(m) for m in means]
        xt = [statistics.fmean(r["points"][k]["tokens"] for r in seeds) for k in range(n)]
        xs = [statistics.fmean(r["points"][k]["seconds"] for r in seeds) for k in range(n)]
        for ax, x in ((axes[0], xt), (axes[1], xs)):
            ax.plot(x, y, "o-", ms=3, lw=1.2, color=f"C{i}", label=arm)
            if len(seeds) > 1:
                ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2, lw=0)
    axes[0].set_xlabel("trained tokens")
    axes[1].set_xlabel("training seconds (stage switches in, evaluation out)")
    axes[0].set_ylabel("mean held-out loss over domains (nats)")
    low = min(p["mean"] for seeds in runs.values() for r in seeds for p in r["points"])
    late = [p["mean"] for seeds in runs.values() for r in seeds for p in r["points"][len(r["points"]) // 4:]]
    axes[0].set_ylim(low - 0.05 * (max(late) - low + 1e-9), max(late) + 0.1 * (max(late) - low + 1e-9))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
