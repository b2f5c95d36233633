"""Pure token accounting and the progress text every rank-0 log line is built from."""

from __future__ import annotations

import math


def valid_targets(global_valid: int, rank: int, rows_per_rank: int, seq_len: int) -> int:
    """Unmasked target positions in one rank's batch: a step's masked tail (the last step of a
    stage) falls on the last ranks' last rows."""
    capacity = rows_per_rank * seq_len
    return max(0, min(capacity, global_valid - rank * capacity))


def step_tokens_by_source(counts: dict[str, int], global_valid: int, seq_len: int) -> dict[str, int]:
    """Trained tokens per source in one global step: its rows hold `counts` rows per source, in
    this order (the ranks' slices joined in rank order), and its valid targets come first."""
    out, offset = dict.fromkeys(counts, 0), 0
    for source, n in counts.items():
        out[source] = max(0, min(n * seq_len, global_valid - offset * seq_len))
        offset += n
    return out


def progress_line(step: int, loss: float, tokens_per_s: float, lr: float, stage: int, n_stages: int,
                  tokens: int, target: int, mfu: float | None = None, eta_s: float | None = None) -> str:
    """The predecessor's line, so its users recognise it; MFU and ETA follow when known."""
    ppl = math.exp(min(loss, 50.0))
    line = (f"Step {step}: Loss={loss:.4f}, PPL={ppl:.2f}, Tokens/sec={tokens_per_s:.0f}, LR={lr:.2e} | "
            f"Stage {stage}/{n_stages} ({tokens:,}/{target:,} tokens, {100.0 * tokens / target:.1f}%)")
    if mfu is not None:
        line += f" | MFU={100 * mfu:.1f}%"
    if eta_s is not None:
        h, rem = divmod(int(eta_s), 3600)
        line += f" | ETA {h}h{rem // 60:02d}m"
    return line
