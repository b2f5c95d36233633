"""The GPT: pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases, tied embeddings.

Two block implementations share one constructor, one tensor layout and one state_dict:
- `TEBlock`: Transformer Engine's fused modules (RMSNorm+QKV GEMM, fused attention, RMSNorm+SwiGLU
  MLP), FP8-capable. We compose `te.LayerNormLinear` / `te.DotProductAttention` / `te.Linear` /
  `te.LayerNormMLP` (the parts `te.TransformerLayer` is built from) rather than the layer
  itself, so the QKV split and RoPE are ours and provably identical to the twin.
- `TorchBlock`: the pure-PyTorch twin (SDPA attention) with the same parameter names and shapes,
  so a checkpoint from either loads in the other (TE's `_extra_state` FP8 metadata is dropped).
The choice is made once in `build_model`; importing this module never imports TE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from yxanul_ray.lm_loss import IGNORE
from yxanul_ray.presets import ModelShape


def rope_tables(head_dim: int, seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [seq_len, head_dim] in the rotate-half convention (as Hugging Face Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, heads, head_dim]; cos/sin: [T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return x * cos + rotated * sin


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


class TorchLayerNormLinear(nn.Module):
    """RMSNorm then a bias-free linear; parameter names as te.LayerNormLinear."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.eps = eps
        self.layer_norm_weight = nn.Parameter(torch.ones(d_in))
        self.weight = nn.Parameter(torch.empty(d_out, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(x, self.layer_norm_weight, self.eps), self.weight)


class TorchLayerNormMLP(nn.Module):
    """RMSNorm then SwiGLU; fc1 holds [gate; up] stacked, as te.LayerNormMLP(activation='swiglu')."""

    def __init__(self, d: int, ffn: int, eps: float):
        super().__init__()
        self.eps = eps
        self.layer_norm_weight = nn.Parameter(torch.ones(d))
        self.fc1_weight = nn.Parameter(torch.empty(2 * ffn, d))
        self.fc2_weight = nn.Parameter(torch.empty(d, ffn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(rms_norm(x, self.layer_norm_weight, self.eps), self.fc1_weight).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.fc2_weight)


class TorchBlock(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.s = s
        kv = s.n_kv_heads * s.head_dim
        self.qkv = TorchLayerNormLinear(s.d_model, s.d_model + 2 * kv, s.norm_eps)
        self.proj = nn.Linear(s.d_model, s.d_model, bias=False)
        self.mlp = TorchLayerNormMLP(s.d_model, s.ffn_hidden, s.norm_eps)

    def attention(self, q, k, v):
        # q: [B, T, H, hd], k/v: [B, T, KV, hd] -> [B, T, H*hd]; SDPA picks the fused kernel.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).flatten(2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        s = self.s
        B, T, _ = x.shape
        kv = s.n_kv_heads * s.head_dim
        q, k, v = self.qkv(x).split([s.d_model, kv, kv], dim=-1)
        q = apply_rope(q.view(B, T, s.n_heads, s.head_dim), cos, sin)
        k = apply_rope(k.view(B, T, s.n_kv_heads, s.head_dim), cos, sin)
        v = v.view(B, T, s.n_kv_heads, s.head_dim)
        x = x + self.proj(self.attention(q, k, v))
        return x + self.mlp(x)


class TEBlock(TorchBlock):
    """Same forward as TorchBlock, with TE's fused (FP8-capable) modules in place of the torch ones."""

    def __init__(self, s: ModelShape):
        nn.Module.__init__(self)
        import transformer_engine.pytorch as te

        self.s = s
        kv = s.n_kv_heads * s.head_dim
        common = {"bias": False, "normalization": "RMSNorm", "eps": s.norm_eps}
        self.qkv = te.LayerNormLinear(s.d_model, s.d_model + 2 * kv, **common)
        self.proj = te.Linear(s.d_model, s.d_model, bias=False)
        self.mlp = te.LayerNormMLP(s.d_model, s.ffn_hidden, activation="swiglu", **common)
        self.core = te.DotProductAttention(s.n_heads, s.head_dim, num_gqa_groups=s.n_kv_heads,
                                           attn_mask_type="causal", qkv_format="bshd")

    def attention(self, q, k, v):
        return self.core(q.contiguous(), k.contiguous(), v.contiguous()).flatten(2)


class GPT(nn.Module):
    def __init__(self, shape: ModelShape, backend: str = "torch"):
        super().__init__()
        self.shape, self.backend = shape, backend
        self.head_loss = "auto"
        """kernels.choose_head_loss's choice for the device the model trains on (`auto`: the device's default)."""
        self.attention: list | None = None
        """kernels.attention_backends's SDPA backends, or None for PyTorch's choice."""
        self.kernel_note: str | None = None
        """Why the head loss is not the one the config asked for (it cannot run here), or None."""
        block = TEBlock if backend == "te" else TorchBlock
        self.tok_emb = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList([block(shape) for _ in range(shape.n_layers)])
        self.final_norm_weight = nn.Parameter(torch.ones(shape.d_model))
        # The head stays a plain bf16 matmul, outside FP8 (the predecessor's choice, for stability).
        self.lm_head = None if shape.tie_embeddings else nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        cos, sin = rope_tables(shape.head_dim, shape.max_seq_len, shape.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.shape.init_std
        # Residual-output projections scaled by 1/sqrt(2L) (GPT-2), so the residual stream's
        # variance does not grow with depth.
        out_std = std / math.sqrt(2 * self.shape.n_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                p.fill_(1.0)
            elif name.endswith(("proj.weight", "fc2_weight")):
                p.normal_(0.0, out_std)
            else:
                p.normal_(0.0, std)

    @property
    def head_weight(self) -> nn.Parameter:
        """The output projection [vocab, d_model] (the token embedding when tied)."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                return_hidden: bool = False) -> torch.Tensor:
        """idx [B, T] token ids -> logits [B, T, vocab]; with `targets` [B, T] the summed
        cross-entropy of the targets that are not IGNORE; with `return_hidden` the final normed
        hidden state [B, T, d_model] for a loss that applies the head itself
        (lm_loss.sliced_lm_loss). Through forward every way, so DDP sees every step.

        The loss is computed here rather than by the caller so that torch.compile sees the head,
        the float cast and the cross-entropy as one graph and fuses them: outside it, the float32
        logits are materialised (4 bytes x tokens x vocab: 17 GB at 131k tokens and a 32k
        vocabulary) and read again by an eager cross-entropy."""
        T = idx.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = rms_norm(x, self.final_norm_weight, self.shape.norm_eps)
        if return_hidden:
            return x
        logits = F.linear(x, self.head_weight)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")

    def portable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state_dict both backends share (TE's FP8 `_extra_state` metadata left out)."""
        return {k: v for k, v in self.state_dict().items() if not k.endswith("_extra_state")}

    def load_portable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")


def choose_backend(requested: str = "auto") -> str:
    """'te' when requested or (auto) when TE imports and a GPU is present, else 'torch'."""
    from yxanul_ray.precision import te_available

    ok, reason = te_available()
    if requested == "te" and not ok:
        raise RuntimeError(f"model.backend is 'te' but {reason}; use backend: auto or torch")
    if requested == "torch":
        return "torch"
    return "te" if ok else "torch"


def build_model(shape: ModelShape, backend: str = "auto", device: str | torch.device = "cpu") -> GPT:
    return GPT(shape, choose_backend(backend)).to(device)


def mark_seq_dynamic(*tensors: torch.Tensor) -> None:
    """Tell torch.compile the sequence length (dim 1) varies (ten stages would exceed the default
    limit of 8 recompilations and fall back to eager). Mark every input that has it, inputs and
    targets alike: one left static pins the shared length, and dynamo refuses the marked one."""
    for t in tensors:
        torch._dynamo.mark_dynamic(t, 1)


def compile_model(model: GPT, backend: str = "inductor", mode: str | None = None):
    """torch.compile with room for every stage's shape; `mode` is torch.compile's (None: default;
    "reduce-overhead" adds CUDA graphs, one per shape)."""
    import torch._dynamo

    # Room for the stage lengths even if a shape still specialises (e.g. batch size per stage).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(model, backend=backend, dynamic=None, mode=mode)
