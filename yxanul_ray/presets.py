"""Model shapes by name, and the arithmetic on them (parameters, FLOPs per token).

Pure Python so that config validation and `plan` can use them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """Architecture of the GPT: pre-norm RMSNorm, RoPE, GQA attention, SwiGLU, no biases."""

    vocab_size: int
    """Rows of the embedding; at least the tokenizer's vocabulary (padded to a multiple of 64)."""
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    """Key/value heads for grouped-query attention; divides n_heads."""
    ffn_hidden: int
    """Width of the SwiGLU hidden layer."""
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every inconsistency; empty when the shape can be built."""
        out = []
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
            if getattr(self, f) <= 0:
                out.append((f, f"must be > 0, got {getattr(self, f)}"))
        # Each of these trains on silently as NaN (rope_theta <= 0, norm_eps < 0) or as a model
        # of zeros (init_std 0), or fails in every train worker (init_std < 0).
        for f in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, f) > 0:
                out.append((f, f"must be > 0, got {getattr(self, f)}"))
        if out:
            return out
        if self.d_model % self.n_heads:
            out.append(("d_model", f"{self.d_model} is not divisible by n_heads={self.n_heads}"))
        elif self.head_dim % 2:
            out.append(("d_model", f"head_dim {self.head_dim} must be even for RoPE"))
        if self.n_heads % self.n_kv_heads:
            out.append(("n_kv_heads", f"{self.n_kv_heads} must divide n_heads={self.n_heads}"))
        return out


def _layer_params(shape: ModelShape) -> int:
    d, kv_dim = shape.d_model, shape.n_kv_heads * shape.head_dim
    attn = 2 * d * d + 2 * d * kv_dim  # q and out projections, k and v projections
    mlp = 3 * d * shape.ffn_hidden  # gate, up, down
    return attn + mlp + 2 * d  # + two RMSNorm weights


def count_params(shape: ModelShape) -> int:
    """Trainable parameters, a tied output head counted once."""
    embed = shape.vocab_size * shape.d_model
    head = 0 if shape.tie_embeddings else embed
    return shape.n_layers * _layer_params(shape) + embed + head + shape.d_model  # + final norm


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + 12·L·d·T for attention.

    Matmul parameters are the blocks plus the output head (the embedding lookup is free). The
    attention term follows the PaLM/nanoGPT convention, without a causal discount, so MFU compares
    with published figures and with the reference benchmark's formula.
    """
    matmul_params = shape.n_layers * _layer_params(shape) + shape.vocab_size * shape.d_model
    return 6.0 * matmul_params + 12.0 * shape.n_layers * shape.d_model * seq_len


GPT2_VOCAB_PADDED = 50304  # 50257 GPT-2 tokens padded to a multiple of 64 for the matmuls.

PRESETS: dict[str, ModelShape] = {
    # CPU unit tests: small enough for a forward/backward in milliseconds.
    "tiny": ModelShape(vocab_size=GPT2_VOCAB_PADDED, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       ffn_hidden=96),
    # The CPU demo: the GPT-2 head dominates its cost, so d_model stays small.
    "demo": ModelShape(vocab_size=GPT2_VOCAB_PADDED, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       ffn_hidden=176),
    # ~277M: the reference benchmark's blocks (d1024 L20 H16 KV4 FFN2816) with the GPT-2 vocabulary.
    "270m": ModelShape(vocab_size=GPT2_VOCAB_PADDED, d_model=1024, n_layers=20, n_heads=16, n_kv_heads=4,
                       ffn_hidden=2816),
    # The predecessor's final corrected shape (d267d4e); vocabulary is ours (it used a 200k SuperBPE).
    "yxanul-270m": ModelShape(vocab_size=GPT2_VOCAB_PADDED, d_model=640, n_layers=28, n_heads=10,
                              n_kv_heads=2, ffn_hidden=1712),
}

SHAPE_FIELDS = tuple(f.name for f in fields(ModelShape))


def resolve_shape(preset: str, overrides: dict) -> ModelShape:
    """The preset with `overrides` applied; the caller has validated names and types."""
    return replace(PRESETS[preset], **overrides)
