"""What held-out validation at token points needs beside the model: when a point is due, the
training clock it is timed against, and a digest of the initial weights.

`yxanul-ray compare` reads these from each arm's final checkpoint (TrainState.validation,
train_seconds, initial_weights): per-domain held-out loss against trained tokens and against
training wall time, where stage switches count and evaluation does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator


def point_crossed(tokens_before: int, tokens_after: int, every: int) -> bool:
    """Whether a step from `tokens_before` to `tokens_after` trained tokens reached a multiple of
    `every` (0: never): validation runs at the first step that reaches each point."""
    return every > 0 and tokens_after // every > tokens_before // every


class TrainClock:
    """Training wall time: from the first batch in hand on, less the time spent paused
    (evaluating). `already`: the seconds a resumed run had trained before."""

    def __init__(self, already: float = 0.0):
        self._already = already
        self._t0: float | None = None
        self._paused = 0.0

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def seconds(self) -> float:
        if self._t0 is None:
            return self._already
        return self._already + time.perf_counter() - self._t0 - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._t0 is not None:
                self._paused += time.perf_counter() - t0


def weights_digest(state_dict: dict) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and bytes (in name order): two runs with
    the same digest started from the same weights."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()
