"""GPU train-step benchmark: the project's real step (model, AdamW, token-based LR, masked loss,
grad clipping) at each curriculum stage's seq_len and batch, on random tokens, bf16, eager and
compiled, FP8 where Transformer Engine exists; and in the same process, at the same shape, dtype
and compile setting, the public baseline a user could pick instead: transformers'
`LlamaForCausalLM` (SDPA attention, fused AdamW, the same tokens per step). A benchmark, not a test.

    python benchmarks/benchmark_gpu_step.py --shape 270m --out runs/gpu-step
    python benchmarks/benchmark_gpu_step.py --config configs/yxanul_270m_progressive_curriculum.yaml --modes compiled \
        --levers head_loss=liger,head_loss=sliced,attention=cudnn --gpus 1

`--shape reference` is a d1024 L20 H16 KV4 FFN2816 model with a 32,768 vocabulary (tied);
`--config` takes the stage table (seq_len and batch per worker) from a curriculum config.
Each side keeps one model per mode across every seq_len, as training keeps it across stages
(compiled once with the sequence length dynamic; `graphs` counts the compiles so far). Each
seq_len's first compiled step checks its loss against the eager model's on the same batch.
Writes DIR/project.json (`check --estimate --gpu-json` reads it) and prints a table with the
project / baseline ratio per seq_len. `--levers` adds a project variant per setting of the
model's kernels (kernels.py: `head_loss=liger|cce|sliced|logits`, `attention=flash|cudnn|efficient`)
or torch.compile's mode (`compile_mode=reduce-overhead`: CUDA graphs), each measured beside the
plain one in the same process. With `--config`, each variant's projected
wall time for the whole curriculum on `--gpus` GPUs (projection.py: stage tokens at the measured
rate, plus the measured compile time and `--switch-s` per stage switch), the baseline's beside it.
`--device cpu --shape tiny` dry-runs the script.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from projection import project_curriculum

from yxanul_ray.config import load_job
from yxanul_ray.curriculum import lr_at
from yxanul_ray.kernels import ATTENTION_BACKENDS, HEAD_LOSSES, attention_backends, choose_head_loss
from yxanul_ray.model import build_model, compile_model, mark_seq_dynamic
from yxanul_ray.presets import ModelShape, count_params, flops_per_token, resolve_shape
from yxanul_ray.specs import OptimizerSpec
from yxanul_ray.step import StepSettings, Trainee, make_optimizer, summed_loss, train_step

REFERENCE = ModelShape(vocab_size=32768, d_model=1024, n_layers=20, n_heads=16, n_kv_heads=4, ffn_hidden=2816)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling_tflops(device: str) -> float:
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - t0) / 1e12


class Variant:
    """One model, optimizer and (maybe) compiled runner, kept across every seq_len of a run as
    training keeps them across stages: one compile with the sequence length dynamic, and the
    recompiles that the stage shapes cause are the ones training pays."""

    def __init__(self, shape, backend, compiled, fp8, opt_spec, device, lever: dict[str, str] | None = None):
        torch.manual_seed(0)
        self.shape, self.compiled, self.device, self.opt_spec = shape, compiled, device, opt_spec
        self.model = build_model(shape, backend, device)
        lever = lever or {}
        device_type = torch.device(device).type
        self.model.head_loss, note = choose_head_loss(lever.get("head_loss", "auto"), device_type)
        self.model.attention = attention_backends(lever.get("attention", "auto"), device_type)
        if note:
            print(f"note: {note}", flush=True)
        self.runner = compile_model(self.model, mode=lever.get("compile_mode")) if compiled else self.model
        self.optimizer = make_optimizer(self.model, opt_spec, device)
        self.recipe = None
        if fp8:
            from yxanul_ray.precision import make_recipe

            self.recipe = make_recipe()

    def bench(self, seq_len, batch, steps) -> dict:
        shape, device = self.shape, self.device
        amp = device == "cuda"
        target = 10**9

        def one(i, tokens=None):
            if tokens is None:
                tokens = torch.randint(0, shape.vocab_size, (batch, seq_len + 1), device=device)
            lr = lr_at(self.opt_spec, target, i * batch * seq_len)
            return train_step(Trainee(self.runner, self.model, self.optimizer), tokens,
                              StepSettings(amp=amp, fp8_recipe=self.recipe, dynamic_seq=self.compiled), lr=lr,
                              global_valid=batch * seq_len)

        t_start = time.perf_counter()
        first = torch.randint(0, shape.vocab_size, (batch, seq_len + 1), device=device)
        with torch.no_grad():
            eager_loss = float(summed_loss(self.model, self.model, first[:, :-1], first[:, 1:], amp=amp,
                                           fp8_recipe=self.recipe))
        # The first step's loss is the forward before its update: the same weights as the eager check.
        step_loss = float(one(0, first))
        for i in range(1, 3):
            one(i)
        synchronize(device)
        warm_s = time.perf_counter() - t_start
        t0 = time.perf_counter()
        for i in range(steps):
            loss = one(i)
        synchronize(device)
        dt = time.perf_counter() - t0
        return {"tok_s": batch * seq_len * steps / dt, "loss": float(loss) / (batch * seq_len),
                "first_loss_rel_diff_vs_eager": abs(step_loss - eager_loss) / abs(eager_loss), "warmup_s": warm_s,
                "graphs_compiled": compiled_graph_count(),
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0}


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (recompiles included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="reference", help="'reference' or a preset name (270m, yxanul-270m, ...)")
    ap.add_argument("--config", help="take (seq_len, batch) per stage from this curriculum config")
    ap.add_argument("--seqs", default="8,16,32,64,128,256,512,768,1536,2048")
    ap.add_argument("--tokens-per-step", type=int, default=131072)
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--fp8", action="store_true", help="also run FP8 (needs Transformer Engine)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to dry-run the script")
    ap.add_argument("--out", default="runs/gpu-step", metavar="DIR", help="where project.json goes")
    ap.add_argument("--no-baseline", action="store_true", help="skip transformers' LlamaForCausalLM")
    ap.add_argument("--levers", default="", help="settings measured each beside the plain step, comma-separated: "
                    "head_loss=liger|cce|sliced|logits, attention=flash|cudnn|efficient, "
                    "compile_mode=reduce-overhead (CUDA graphs)|max-autotune-no-cudagraphs")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the --config projection assumes (each at the "
                    "measured per-GPU rate)")
    ap.add_argument("--switch-s", type=float, default=0.0, help="seconds per stage switch in the projection "
                    "(a run's log: data start and first batch)")
    args = ap.parse_args()
    levers = [dict([lever.split("=", 1)]) for lever in args.levers.split(",") if "=" in lever]
    allowed = {"head_loss": HEAD_LOSSES, "attention": ATTENTION_BACKENDS,
               "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}
    for lever in [x for x in args.levers.split(",") if x]:
        key, _, value = lever.partition("=")
        if value not in allowed.get(key, ()):
            ap.error(f"--levers {lever}: expected one of "
                     + "; ".join(f"{k}={'|'.join(v)}" for k, v in allowed.items()))

    shape = REFERENCE if args.shape == "reference" else resolve_shape(args.shape, {})
    if args.config:
        job = load_job(args.config)
        shape = job.model.shape if args.shape != "reference" else shape
        plan = [(st.seq_len, st.global_batch // job.run.workers) for st in job.curriculum.stages]
    else:
        plan = [(s, max(8, args.tokens_per_step // s // 8 * 8)) for s in map(int, args.seqs.split(","))]
    device = args.device
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = matmul_ceiling_tflops(device)
    print(f"bf16 matmul ceiling: {peak:.0f} TFLOP/s on {device_name}", flush=True)
    from yxanul_ray.precision import te_available

    te_ok, reason = te_available()
    modes = args.modes.split(",")
    variants = [(m == "compiled", False, "torch", {}) for m in modes]
    variants += [(modes[-1] == "compiled", False, "torch", lever) for lever in levers]
    if te_ok:
        variants += [(False, False, "te", {})] + ([(False, True, "te", {})] if args.fp8 else [])
    else:
        print(f"Transformer Engine: {reason}; torch twin only", flush=True)
    rows = []
    opt_spec = OptimizerSpec()
    for compiled, fp8, backend, lever in variants:
        label = f"{backend}{'-fp8' if fp8 else ''}{'-compiled' if compiled else ''}" + "".join(
            f" {k}={v}" for k, v in lever.items())
        rows += bench_rows(Variant(shape, backend, compiled, fp8, opt_spec, device, lever), label, shape, plan,
                           args.steps, device, peak)
    baseline_rows = [] if args.no_baseline else bench_baseline(shape, plan, args, device, peak)
    baseline = {(r["mode"], r["seq"]): r["tok_s"] for r in baseline_rows if "tok_s" in r}
    for r in rows:
        ref = baseline.get(("llama" + ("-compiled" if r["mode"].endswith("compiled") else ""), r["seq"]))
        if ref and "tok_s" in r:
            r["reference_tok_s"], r["ratio"] = ref, r["tok_s"] / ref
    projections = {}
    if args.config:
        stages = [(st.seq_len, st.tokens) for st in job.curriculum.stages]
        for label in dict.fromkeys(r["mode"] for r in rows + baseline_rows):
            projections[label] = project_curriculum(stages, [r for r in rows + baseline_rows if r["mode"] == label],
                                                    args.gpus, args.switch_s)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "project.json"), "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "peak_tflops": peak,
                   "params_m": count_params(shape) / 1e6, "rows": rows, "baseline_rows": baseline_rows,
                   "projection": projections}, f, indent=1)
    print(f"\nparams {count_params(shape) / 1e6:.1f}M on {device_name}; baseline: transformers LlamaForCausalLM "
          f"at the same shape; written to {args.out}/project.json")
    print(f"{'mode':22} {'seq':>5} {'batch':>6} {'tok/s':>10} {'MFU':>6} {'ref tok/s':>10} {'ratio':>6} "
          f"{'warm s':>7} {'graphs':>6}")
    for r in rows + baseline_rows:
        if "error" in r:
            print(f"{r['mode']:22} {r['seq']:>5}  ERROR {r['error'][:80]}")
        else:
            ref = f"{r['reference_tok_s']:>10.0f} {r['ratio']:>5.3f}x" if "ratio" in r else f"{'-':>10} {'-':>6}"
            r.setdefault("graphs_compiled", 0)
            print(f"{r['mode']:22} {r['seq']:>5} {r['batch']:>6} {r['tok_s']:>10.0f} {r['mfu']:>6.1%} {ref} "
                  f"{r['warmup_s']:>7.1f} {r['graphs_compiled']:>6}")
    if projections:
        print(f"\nprojected wall time of {args.config} ({job.curriculum.target_tokens:,} tokens) on {args.gpus} x "
              f"{device_name}, {args.switch_s:.0f} s per switch:")
        print(f"{'mode':34} {'total min':>9} {'steps min':>9} {'compile s':>9}")
        for label, p in projections.items():
            total = f"{p['total_s'] / 60:>9.1f}" if p["total_s"] is not None else f"{'stage ' + str(p['missing']):>9}"
            print(f"{label:34} {total} {p['step_s'] / 60:>9.1f} {p['compile_s']:>9.0f}")


class LlamaBaseline:
    """transformers' LlamaForCausalLM at the project model's shape (the export's config), with
    fused AdamW, bf16 autocast on GPU and the same compile setting: what a user could train
    instead. The loss is the mean cross-entropy of its float32 logits, as transformers computes it."""

    def __init__(self, shape, compiled, opt_spec, device):
        from transformers import LlamaConfig, LlamaForCausalLM

        from yxanul_ray.export import llama_config

        torch.manual_seed(0)
        config = LlamaConfig(**llama_config(shape, eos_id=0), attn_implementation="sdpa")
        self.model = LlamaForCausalLM(config).to(device)
        self.runner = compile_model(self.model) if compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt_spec.peak_lr, betas=opt_spec.betas,
                                           weight_decay=opt_spec.weight_decay, fused=device == "cuda")
        self.shape, self.compiled, self.device = shape, compiled, device

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        x, y = tokens[:, :-1], tokens[:, 1:]
        if self.compiled:
            mark_seq_dynamic(x, y)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
            logits = self.runner(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def bench(self, seq_len, batch, steps) -> dict:
        def batch_of():
            return torch.randint(0, self.shape.vocab_size, (batch, seq_len + 1), device=self.device)

        t_start = time.perf_counter()
        for _ in range(3):
            self.step(batch_of())
        synchronize(self.device)
        warm_s = time.perf_counter() - t_start
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step(batch_of())
        synchronize(self.device)
        dt = time.perf_counter() - t0
        return {"tok_s": batch * seq_len * steps / dt, "loss": float(loss), "warmup_s": warm_s,
                "graphs_compiled": compiled_graph_count(),
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else 0.0}


def bench_baseline(shape, plan, args, device, peak) -> list[dict]:
    """The baseline's rows, one per (mode, seq_len), as the project's."""
    rows = []
    for mode in args.modes.split(","):
        compiled = mode == "compiled"
        rows += bench_rows(LlamaBaseline(shape, compiled, OptimizerSpec(), device),
                           "llama" + ("-compiled" if compiled else ""), shape, plan, args.steps, device, peak)
    return rows


def bench_rows(side, label: str, shape, plan, steps: int, device: str, peak: float) -> list[dict]:
    """One row per (seq_len, batch) of `plan` for one side (the project's Variant or the
    baseline), its model kept across them; a shape that fails is a row with its error."""
    rows = []
    for seq_len, batch in plan:
        try:
            r = side.bench(seq_len, batch, steps)
            r["mfu"] = r["tok_s"] * flops_per_token(shape, seq_len) / (peak * 1e12)
        except Exception as e:  # noqa: BLE001 - report and continue with the next shape
            r = {"error": repr(e)[:300]}
        r.update(mode=label, seq=seq_len, batch=batch)
        rows.append(r)
        print(r, flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return rows


if __name__ == "__main__":
    main()
