"""The language-model head's loss without its [tokens, vocab] logits: the head matmul, the
cross-entropy and their gradients, a slice of tokens at a time.

Why: with the GPT-2 vocabulary the logits and the three tensors autograd keeps beside them are
~4 x tokens x 50k floats; on CPU every one of those allocations is fresh pages from the kernel
(above glibc's mmap threshold), so half of each step's CPU time went to page faults. Slices of a
few MiB stay in the allocator's heap and are reused step after step. Measured by
benchmarks/benchmark_cpu_step.py: one 8 x 2048 step of the demo model on 2 threads faulted 3.2M
pages (sys 5.4 s, user 6.6 s) with a 9.9 GiB peak RSS; sliced, 28k faults and 0.66 GiB.

The gradients are computed in the forward pass (they are known there: softmax - one-hot) and
handed back in backward, scaled by the incoming gradient, so nothing vocab-sized is kept.
"""

from __future__ import annotations

import torch

IGNORE = -100
SLICE_BYTES = 8 << 20
"""Logits per slice: under glibc's largest mmap threshold (32 MiB), so slices come from the heap."""


def _sliced(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, slice_tokens: int,
            with_grads: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(summed loss, d loss/d hidden, d loss/d weight), the gradients None without `with_grads`."""
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grads else None
    for start in range(0, hidden.shape[0], slice_tokens):
        h = hidden[start:start + slice_tokens]
        t = targets[start:start + slice_tokens]
        logits = (h @ weight.t()).float()
        valid = t != IGNORE
        picked = t.clamp(min=0)
        target_logit = logits.gather(1, picked[:, None]).squeeze(1)
        # Softmax in place, one exp per logit: it is both the loss's normaliser and the
        # gradient, d(summed loss)/d(logits) = softmax - one-hot (zero on ignored positions).
        top = logits.amax(dim=1, keepdim=True)
        probs = logits.sub_(top).exp_()
        total = probs.sum(dim=1, keepdim=True)
        loss += ((top.squeeze(1) + total.squeeze(1).log() - target_logit) * valid).sum()
        if not with_grads:
            continue
        grad_logits = probs.div_(total)
        grad_logits[torch.arange(len(t), device=t.device), picked] -= 1.0
        if not bool(valid.all()):
            grad_logits.mul_(valid[:, None])
        g = grad_logits.to(h.dtype)
        grad_hidden[start:start + slice_tokens] = g @ weight
        grad_weight.addmm_(g.t().float(), h.float())
    return loss, grad_hidden, grad_weight


class _SlicedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                slice_tokens: int) -> torch.Tensor:
        loss, grad_hidden, grad_weight = _sliced(hidden, weight, targets, slice_tokens, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


def sliced_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   slice_bytes: int = SLICE_BYTES) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` (IGNORE positions left out).
    hidden [N, D], weight [V, D], targets [N]; equal to
    F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=IGNORE, reduction="sum")
    in value and gradients, up to float rounding. Under no_grad it computes the value alone."""
    slice_tokens = max(1, slice_bytes // (4 * weight.shape[0]))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _SlicedLinearCrossEntropy.apply(hidden, weight, targets, slice_tokens)
    return _sliced(hidden, weight, targets, slice_tokens, with_grads=False)[0]
