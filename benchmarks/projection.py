"""A curriculum's projected wall time from per-shape step measurements (pure): each stage's tokens
at the rate measured at its (seq_len, batch), on `gpus` GPUs that each run that shape, plus each
stage's measured compile time (the first steps at a new shape, less what they would take warm)
and a per-switch cost measured elsewhere (a run's log: data start and the first batch)."""

from __future__ import annotations


def project_curriculum(stages: list[tuple[int, int]], rows: list[dict], gpus: int = 1,
                       switch_s: float = 0.0, warm_steps: int = 3) -> dict:
    """stages: (seq_len, tokens) per stage; rows: one mode's benchmark rows ({seq, batch, tok_s,
    warmup_s}), one per seq_len. Returns {total_s, step_s, compile_s, switch_s, stages: [...]};
    a stage whose shape has no rate (it failed) makes total_s None and names it in `missing`."""
    by_seq = {r["seq"]: r for r in rows if "tok_s" in r}
    out, missing = [], []
    step_total = compile_total = 0.0
    for k, (seq_len, tokens) in enumerate(stages):
        row = by_seq.get(seq_len)
        if row is None:
            missing.append(k + 1)
            continue
        step_s = tokens / (row["tok_s"] * gpus)
        warm_step_s = row["batch"] * seq_len / row["tok_s"]
        compile_s = max(0.0, row.get("warmup_s", 0.0) - warm_steps * warm_step_s)
        step_total += step_s
        compile_total += compile_s
        out.append({"stage": k + 1, "seq": seq_len, "tokens": tokens, "tok_s": row["tok_s"] * gpus,
                    "step_s": step_s, "compile_s": compile_s})
    switches = switch_s * max(0, len(stages) - 1)
    total = None if missing else step_total + compile_total + switches
    return {"total_s": total, "step_s": step_total, "compile_s": compile_total, "switch_s": switches,
            "stages": out, "missing": missing}
