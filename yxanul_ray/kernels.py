"""Which kernel computes the output layer's loss and the attention, per device, with the plain
path where a kernel cannot run (pure selection, then the loss functions it selects).

The output layer and its cross-entropy are a large share of a small model's step (a 50k-way head
on a 270M model). `model.head_loss` picks how they run:
- `logits`: the head and the loss inside the model's forward, which torch.compile fuses (GPU default);
- `sliced`: lm_loss's slices of tokens, no [tokens, vocab] logits kept (CPU default; any device);
- `liger`: Liger-Kernel's fused linear cross-entropy (Triton; `pip install liger-kernel`);
- `cce`: Apple's Cut Cross-Entropy (Triton; `pip install cut-cross-entropy`).
`model.attention` pins SDPA's backend (flash, cuDNN, memory-efficient) where PyTorch's own choice
is slower at a stage's shape; `auto` leaves it to PyTorch. A kernel that cannot run here (no GPU,
not installed) is replaced by the plain path, and the run's first line says so.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable

import torch

from yxanul_ray.lm_loss import IGNORE, sliced_lm_loss

HEAD_LOSSES = ("auto", "logits", "sliced", "liger", "cce")
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
_PACKAGES = {"liger": ("liger_kernel", "liger-kernel"), "cce": ("cut_cross_entropy", "cut-cross-entropy")}

HeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(hidden [N, D], head weight [V, D], targets [N]) -> summed cross-entropy, IGNORE left out."""


def choose_head_loss(requested: str, device_type: str, installed=importlib.util.find_spec) -> tuple[str, str | None]:
    """(the head loss that runs on `device_type`, why it is not the one requested, or None)."""
    if device_type != "cuda":
        if requested in ("auto", "sliced"):
            return "sliced", None
        return "sliced", (f"model.head_loss {requested} runs on a CUDA GPU only; the sliced loss runs on "
                          f"{device_type} (same values and gradients)")
    if requested == "auto":
        return "logits", None
    if requested in _PACKAGES:
        module, package = _PACKAGES[requested]
        if installed(module) is None:
            return "logits", (f"model.head_loss {requested}: {package} is not installed (pip install {package}); "
                              "the compiled logits loss runs instead")
    return requested, None


def head_loss_function(name: str) -> HeadLoss:
    """The summed-loss function of a head loss other than `logits` (which the model computes)."""
    if name == "sliced":
        return sliced_lm_loss
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
        return lambda hidden, weight, targets: fused(weight, hidden, targets)
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy

        return lambda hidden, weight, targets: linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE,
                                                                    reduction="sum")
    raise ValueError(f"no head loss function for {name!r}")


def attention_backends(requested: str, device_type: str) -> list | None:
    """The SDPA backends to allow (torch.nn.attention.SDPBackend), or None for PyTorch's own
    choice: always on CPU, whose kernels these names do not select."""
    if requested == "auto" or device_type != "cuda":
        return None
    from torch.nn.attention import SDPBackend

    return [{"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[requested]]


def attention_context(backends: list | None):
    """A context that runs SDPA on `backends` (attention_backends'), or does nothing for None."""
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)
