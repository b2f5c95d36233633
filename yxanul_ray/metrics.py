"""A train worker's metrics and logs: the log interval's loss and rate, rank 0's progress line,
TensorBoard scalars, the dashboard gauges (through the coordinator), MFU against the GPU's own
peak, the stage banner and the stage's summary lines. Every rank keeps the interval (the loss
all-reduce is collective); only rank 0 prints and writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import torch

from yxanul_ray.accounting import progress_line
from yxanul_ray.checkpoint import TrainState
from yxanul_ray.hub import Redacted
from yxanul_ray.presets import flops_per_token
from yxanul_ray.specs import JobSpec
from yxanul_ray.tracker import Tracker, open_tracker

PEAK_BF16_FLOPS = (
    # (a substring of torch.cuda.get_device_name(), datasheet dense bf16 FLOP/s); first match wins
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)


def peak_flops(device_name: str | None, env: Mapping[str, str] = os.environ) -> float | None:
    """One GPU's dense bf16 peak: `YXANUL_PEAK_FLOPS` where set, else the datasheet figure for
    the card, else None (no MFU is printed rather than a wrong one)."""
    if env.get("YXANUL_PEAK_FLOPS"):
        return float(env["YXANUL_PEAK_FLOPS"])
    for name, flops in PEAK_BF16_FLOPS:
        if device_name and name in device_name:
            return flops
    return None


class Metrics:
    """One worker's log interval, and rank 0's lines, TensorBoard writer and gauges."""

    def __init__(self, job: JobSpec, rank: int, world: int, device: torch.device, coord, artifacts: str,
                 tracker: tuple[str, Redacted | None] | None = None):
        """`tracker`: the run's name and the driver's tracker variables (tracker.open_tracker)."""
        self.job, self.rank, self.world, self.coord = job, rank, world, coord
        self.shape = job.model.shape
        self.interval = self._new_interval()
        self.latest: dict[str, float] = {}
        """The last closed interval's loss, lr and tokens_per_s (every rank: Ray Train's reports)."""
        peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self.peak = peak * world if peak else None
        self.writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(artifacts, exist_ok=True)
            self.writer = SummaryWriter(os.path.join(artifacts, "tensorboard"))
        self.tracker = Tracker()
        if rank == 0 and tracker is not None:
            self.tracker = open_tracker(job.run.tracker, tracker[0], job.to_dict(), tracker[1])

    @staticmethod
    def _new_interval() -> dict:
        return {"loss": 0.0, "tokens": 0, "t0": time.perf_counter(), "steps": 0}

    def add_step(self, loss_sum: torch.Tensor, global_valid: int) -> None:
        """A step's summed loss (left on the device: reading it would wait for the GPU) and tokens."""
        iv = self.interval
        iv["loss"] += loss_sum.double()  # in float64 as a Python sum was
        iv["tokens"] += global_valid
        iv["steps"] += 1

    def start_interval_if_empty(self, now: float) -> None:
        """The interval starts at a stage's first batch when `log` closed it at the last stage's end,
        so the progress line's Tokens/sec is training's own rate (start and switches have lines
        of their own)."""
        if self.interval["steps"] == 0:
            self.interval["t0"] = now

    def log(self, state: TrainState, lr: float, plan, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor],
            rank0_value: float = 0.0) -> float | None:
        """Close the interval: every rank joins the loss all-reduce; rank 0 prints the progress
        line and records the scalars and the dashboard's gauges. Returns rank 0's `rank0_value`
        on every rank (it rides the same all-reduce: one clock for decisions all ranks must
        share), or None where the interval was empty and nothing was reduced."""
        iv = self.interval
        if iv["steps"] == 0:
            return None
        # The interval's one wait for the GPU: its summed loss, still on the device, all-reduced there.
        loss_sum = torch.as_tensor(iv["loss"], dtype=torch.float64).reshape(1)
        shared = torch.tensor([rank0_value if self.rank == 0 else 0.0], dtype=torch.float64, device=loss_sum.device)
        reduced = sum_over_ranks(torch.cat([loss_sum, shared]))
        loss, agreed = reduced[0].item() / max(1, iv["tokens"]), reduced[1].item()
        rate = iv["tokens"] / max(time.perf_counter() - iv["t0"], 1e-9)
        self.interval = self._new_interval()
        self.latest = {"loss": loss, "lr": lr, "tokens_per_s": rate}
        if self.rank != 0:
            return agreed
        cur = self.job.curriculum
        mfu = rate * flops_per_token(self.shape, plan.seq_len) / self.peak if self.peak else None
        eta = (cur.target_tokens - state.tokens) / rate if rate > 0 else None
        stage_no = min(state.stage + 1, len(cur.stages))
        print(progress_line(state.step, loss, rate, lr, stage_no, len(cur.stages), state.tokens, cur.target_tokens,
                            mfu, eta), flush=True)
        state.loss_history.append([state.tokens, loss])
        scalars = {"train/loss": loss, "train/tokens_per_s": rate, "train/lr": lr, "train/stage": stage_no}
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, state.tokens)
        self.tracker.scalars(scalars, state.tokens)
        self.coord.record_progress.remote({"tokens": state.tokens, "stage": stage_no, "tokens_per_s": rate,
                                           "loss": loss, "tokens_by_source": dict(state.tokens_by_source)})
        return agreed

    def stage_banner(self, state: TrainState, plan, fp8: bool) -> None:
        if self.rank != 0:
            return
        cur = self.job.curriculum
        st = cur.stages[state.stage]
        mix = ", ".join(f"{s} {w:.0%}" for s, w in st.mix.items())
        print("=" * 60 + f"\nStage {state.stage + 1}/{len(cur.stages)}: {st.name}"
              f"{' - ' + st.focus if st.focus else ''}\n  seq_len {st.seq_len}, batch {st.global_batch} "
              f"sequences ({st.step_tokens:,} tokens/step), {plan.steps} steps, {st.tokens:,} tokens"
              f"{', FP8' if st.fp8 and fp8 else ''}\n  mix: {mix}\n" + "=" * 60, flush=True)

    def stage_summary(self, state: TrainState, steps: int, tokens: int, seconds: float,
                      losses: dict[str, float]) -> None:
        """Rank 0's lines for the stage just ended: its realised mix, its step time (this
        session's steps only, after a resume) and its held-out losses."""
        if self.rank != 0:
            return
        cur = self.job.curriculum
        k = state.stage - 1
        st = cur.stages[k]
        mix = state.stage_tokens_by_source[k] if k < len(state.stage_tokens_by_source) else {}
        total = sum(mix.values())
        realised = ", ".join(f"{s} {n:,} ({n / max(1, total):.2%} vs {st.mix.get(s, 0):.0%})" for s, n in mix.items())
        print(f"Stage {k + 1}/{len(cur.stages)} done: {total:,} tokens; realised mix: {realised}", flush=True)
        print(f"  stage time: {steps} steps in {seconds:.2f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)",
              flush=True)
        if losses:
            shown = ", ".join(f"{s} loss {v:.4f}" for s, v in losses.items())
            print(f"  validation (seq_len {cur.validation_seq_len}): {shown}", flush=True)

    def validation_point(self, state: TrainState, losses: dict[str, float]) -> None:
        """Rank 0's line for a validation at a token point inside a stage."""
        if self.rank == 0 and losses:
            shown = ", ".join(f"{s} {v:.4f}" for s, v in losses.items())
            print(f"  validation at {state.tokens:,} tokens, {state.train_seconds:.1f} s of training "
                  f"(seq_len {self.job.curriculum.validation_seq_len}): {shown}", flush=True)

    def validation_scalars(self, losses: dict[str, float], tokens: int) -> None:
        if self.writer is not None:
            for s, v in losses.items():
                self.writer.add_scalar(f"val/{s}", v, tokens)
            self.tracker.scalars({f"val/{s}": v for s, v in losses.items()}, tokens)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self, plot: str | None = None, final_checkpoint: str | None = None) -> None:
        """The run's end: the loss plot and the final checkpoint's path to the tracker, and the logs closed."""
        if self.writer is not None:
            self.writer.close()
        if plot and os.path.exists(plot):
            self.tracker.artifact(plot)
        self.tracker.close(final_checkpoint)
