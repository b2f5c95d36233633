"""Transformer Engine probing and the one FP8 shim.

Everything that depends on TE's version lives here: `te.autocast(recipe=...)` on TE >= 2.9,
`te.fp8_autocast(fp8_recipe=...)` before it, and a no-op where TE is absent. Importing this
module does not import TE; `te_available()` does, once.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache


@lru_cache(maxsize=1)
def te_available() -> tuple[bool, str]:
    """(usable, reason): TE imports and a CUDA device is present."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device (Transformer Engine needs one)"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means 'not usable', with its reason
        return False, f"transformer_engine is not importable: {type(e).__name__}: {e}"
    return True, "ok"


def make_recipe(kind: str = "delayed", fmt: str = "hybrid", amax_history_len: int = 16):
    """The FP8 recipe; the predecessor's is DelayedScaling, HYBRID (E4M3 fwd, E5M2 bwd), 16, max."""
    from transformer_engine.common import recipe

    fp8_format = recipe.Format.HYBRID if fmt == "hybrid" else recipe.Format.E4M3
    if kind == "current":
        return recipe.Float8CurrentScaling(fp8_format=fp8_format)
    return recipe.DelayedScaling(fp8_format=fp8_format, amax_history_len=amax_history_len, amax_compute_algo="max")


def fp8_autocast(enabled: bool, fp8_recipe=None, group=None):
    """Context for the forward pass only (backward and the optimizer step run outside it).
    `group`: the data-parallel process group over which the FP8 amax statistics are reduced,
    so every rank scales alike (None: this rank's own)."""
    if not enabled:
        return contextlib.nullcontext()
    import transformer_engine.pytorch as te

    if hasattr(te, "autocast"):  # TE >= 2.9 (PR #2256): fp8_autocast is deprecated
        return te.autocast(enabled=True, recipe=fp8_recipe, amax_reduction_group=group)
    return te.fp8_autocast(enabled=True, fp8_recipe=fp8_recipe, fp8_group=group)


def data_parallel_group():
    """The process group of all ranks where torch.distributed runs with more than one, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None
