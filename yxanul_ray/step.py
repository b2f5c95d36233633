"""One optimizer step of the GPT: shared by the Ray train loop and the GPU benchmark, so the
benchmark measures exactly what training runs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from yxanul_ray.accounting import valid_targets
from yxanul_ray.kernels import attention_context, head_loss_function
from yxanul_ray.lm_loss import IGNORE, sliced_lm_loss
from yxanul_ray.model import mark_seq_dynamic
from yxanul_ray.precision import data_parallel_group, fp8_autocast


class Trainee(NamedTuple):
    """What a step updates: the model it steps through (DDP-wrapped, compiled, or `raw_model`
    itself), the model without those wrappers, and its optimizer."""

    model: torch.nn.Module
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class StepSettings:
    """How a rank steps: its place among `world` ranks, sequences per forward pass (None: all),
    the global gradient-norm clip (0: none), bf16 autocast, an FP8 recipe (Transformer Engine)
    or None, and whether the sequence dimension is marked dynamic for torch.compile."""

    rank: int = 0
    world: int = 1
    micro_batch: int | None = None
    grad_clip: float = 1.0
    amp: bool = False
    fp8_recipe: object = None
    dynamic_seq: bool = False


def train_step(trainee: Trainee, tokens: torch.Tensor, settings: StepSettings, *, lr: float,
               global_valid: int) -> torch.Tensor:
    """tokens [R, S+1] on the device; `global_valid` trained targets in the global batch (the
    stage's budget may end inside it). Returns the summed loss of this rank's valid targets (a
    device tensor: reading it forces a sync, so callers read it only when they log)."""
    model, raw_model, optimizer = trainee
    rank, world, grad_clip = settings.rank, settings.world, settings.grad_clip
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = tokens[:, :-1], tokens[:, 1:].clone()  # [R, S] each
    rows, seq_len = y.shape
    valid = valid_targets(global_valid, rank, rows, seq_len)
    if valid < y.numel():
        y.view(-1)[valid:] = IGNORE  # the stage's budget ends inside this batch
    micro = settings.micro_batch or rows
    chunks = list(zip(x.split(micro), y.split(micro)))
    loss_sum = torch.zeros((), device=tokens.device)
    for i, (xc, yc) in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            if settings.dynamic_seq:
                mark_seq_dynamic(xc, yc)
            loss = summed_loss(model, raw_model, xc, yc, amp=settings.amp, fp8_recipe=settings.fp8_recipe)
            # DDP averages gradients over ranks: scale so the result is the global token mean.
            (loss * world / max(1, global_valid)).backward()
        loss_sum += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def summed_loss(model, raw_model, x: torch.Tensor, y: torch.Tensor, *, amp: bool, fp8_recipe=None) -> torch.Tensor:
    """The summed cross-entropy of `model` on x [R, S] against y [R, S] (IGNORE left out), for
    training and validation alike. `raw_model` is `model` without its DDP/compile wrappers; its
    `head_loss` and `attention` (kernels.py) say which kernels compute the loss and attention."""
    head_loss = raw_model.head_loss
    if head_loss == "auto":
        # On CPU the [tokens, vocab] logits cost more in page faults than in FLOPs (lm_loss.py);
        # on GPU the caching allocator reuses them and torch.compile fuses head and loss.
        head_loss = "sliced" if x.device.type == "cpu" else "logits"
    if x.device.type == "cpu" and head_loss == "sliced":
        hidden = model(x, return_hidden=True)
        return sliced_lm_loss(hidden.reshape(-1, hidden.shape[-1]), raw_model.head_weight, y.reshape(-1))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    group = data_parallel_group() if fp8_recipe is not None else None
    with attention_context(raw_model.attention), autocast:
        with fp8_autocast(fp8_recipe is not None, fp8_recipe, group):
            if head_loss == "logits":
                return model(x, targets=y)
            hidden = model(x, return_hidden=True)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        # The head in the hidden state's dtype (bf16 under autocast), as the logits path runs it.
        return head_loss_function(head_loss)(hidden, raw_model.head_weight.to(hidden.dtype), y.reshape(-1))


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, *, amp: bool, chunk_rows: int = 16) -> tuple[float, int]:
    """(summed loss, target count) of `model` (unwrapped, in eval mode) on held-out rows
    tokens [R, S+1], a chunk of rows at a time: the train loop's validation and the benchmark's."""
    loss_sum, targets = 0.0, 0
    for chunk in tokens.split(chunk_rows):
        loss_sum += summed_loss(model, model, chunk[:, :-1], chunk[:, 1:], amp=amp).item()
        targets += chunk[:, 1:].numel()
    return loss_sum, targets


def adamw_state_like(optimizer: torch.optim.AdamW) -> dict:
    """`optimizer.state_dict()` as it will be once AdamW has stepped, for its shapes: each
    parameter's two moments (tensors like it), numbered as state_dict numbers them. Rank 0 makes
    its checkpoint buffers from this before the first step (the small `step` counters are made at
    the first checkpoint). Once it has stepped, or loaded a checkpoint, the real one."""
    if optimizer.state:
        return optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {"state": {i: {"exp_avg": p, "exp_avg_sq": p} for i, p in enumerate(params)}}


def make_optimizer(model, opt_spec, device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not norms), fused on CUDA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt_spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt_spec.peak_lr, betas=opt_spec.betas, eps=opt_spec.eps,
                             fused=torch.device(device).type == "cuda")
