"""GPU train-step benchmark: the project's real step (model, AdamW, token-based LR, masked loss,
grad clipping) at every curriculum stage's seq_len and batch, on random tokens, bf16, eager and
compiled, FP8 where Transformer Engine exists (a benchmark, not a test).

Run it beside ../shared/bench/reference_gpt_step.py in the same device call and compare the
printed tok/s per seq_len (ratios; cards and clocks differ between calls).
jobs/gpu_step_vs_reference.sh runs both at the same shape, compiled and eager:

    REF=.bench-ref/reference_gpt_step.py bash jobs/gpu_step_vs_reference.sh

`--shape reference` is the reference's model (d1024 L20 H16 KV4 FFN2816, vocab 32768, tied);
`--config` takes the stage table (seq_len and batch) from a curriculum config instead.
`--reference-json` reads the reference's JSON from the same call and adds the ratio per seq_len.
One model per mode runs every seq_len in turn, as training runs its stages (compiled once with the
sequence length dynamic; the table's `graphs` column counts the compiles so far). Each seq_len's
first compiled step checks its loss against the eager model's on the same batch.
Writes $OUT/<tag>.json and prints a table last. `--device cpu --shape tiny` dry-runs the script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from yxanul_ray.config import OptimizerSpec, load_job  # noqa: E402
from yxanul_ray.curriculum import lr_at  # noqa: E402
from yxanul_ray.model import build_model, compile_model  # noqa: E402
from yxanul_ray.presets import ModelShape, count_params, flops_per_token, resolve_shape  # noqa: E402
from yxanul_ray.step import make_optimizer, summed_loss, train_step  # noqa: E402

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

    def __init__(self, shape, backend, compiled, fp8, opt_spec, device):
        torch.manual_seed(0)
        self.shape, self.compiled, self.device, self.opt_spec = shape, compiled, device, opt_spec
        self.model = build_model(shape, backend, device)
        self.runner = compile_model(self.model) if compiled else self.model
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
            return train_step(self.runner, self.model, self.optimizer, tokens, lr=lr, global_valid=batch * seq_len,
                              rank=0, world=1, micro_batch=None, grad_clip=1.0, amp=amp,
                              fp8_recipe=self.recipe, dynamic_seq=self.compiled)

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
    ap.add_argument("--tag", default="project", help="names the JSON written to $OUT")
    ap.add_argument("--reference-json", help="the reference_gpt_step.py JSON of the same call, for ratios")
    args = ap.parse_args()

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
    variants = [(m == "compiled", False, "torch") for m in args.modes.split(",")]
    if te_ok:
        variants += [(False, False, "te")] + ([(False, True, "te")] if args.fp8 else [])
    else:
        print(f"Transformer Engine: {reason}; torch twin only", flush=True)
    rows = []
    opt_spec = OptimizerSpec()
    for compiled, fp8, backend in variants:
        variant = Variant(shape, backend, compiled, fp8, opt_spec, device)
        for seq_len, batch in plan:
            label = f"{backend}{'-fp8' if fp8 else ''}{'-compiled' if compiled else ''}"
            try:
                r = variant.bench(seq_len, batch, args.steps)
                r["mfu"] = r["tok_s"] * flops_per_token(shape, seq_len) / (peak * 1e12)
            except Exception as e:  # noqa: BLE001 - report and continue with the next shape
                r = {"error": repr(e)[:300]}
            r.update(mode=label, seq=seq_len, batch=batch)
            rows.append(r)
            print(r, flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        del variant
    reference = reference_tok_s(args.reference_json)
    for r in rows:
        ref = reference.get((r["mode"].endswith("compiled"), r["seq"]))
        if ref and "tok_s" in r:
            r["reference_tok_s"], r["ratio"] = ref, r["tok_s"] / ref
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, f"{args.tag}.json"), "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "peak_tflops": peak,
                   "params_m": count_params(shape) / 1e6, "rows": rows}, f, indent=1)
    print(f"\n[{args.tag}] params {count_params(shape) / 1e6:.1f}M on {device_name}")
    print(f"{'mode':22} {'seq':>5} {'batch':>6} {'tok/s':>10} {'MFU':>6} {'ref tok/s':>10} {'ratio':>6} "
          f"{'warm s':>7} {'graphs':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:22} {r['seq']:>5}  ERROR {r['error'][:80]}")
        else:
            ref = f"{r['reference_tok_s']:>10.0f} {r['ratio']:>5.3f}x" if "ratio" in r else f"{'-':>10} {'-':>6}"
            print(f"{r['mode']:22} {r['seq']:>5} {r['batch']:>6} {r['tok_s']:>10.0f} {r['mfu']:>6.1%} {ref} "
                  f"{r['warmup_s']:>7.1f} {r['graphs_compiled']:>6}")


def reference_tok_s(path: str | None) -> dict[tuple[bool, int], float]:
    """(compiled, seq_len) -> tok/s from reference_gpt_step.py's JSON; empty without one."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = json.load(f)["rows"]
    return {(r["compiled"], r["seq"]): r["tok_s"] for r in rows if "tok_s" in r}


if __name__ == "__main__":
    main()
