"""The CPU training step with the sliced LM-head loss against the full-logits loss it replaced
(a benchmark, not a test).

For each seq_len: one rank's share of a demo step (4 rows of the demo model, one torch thread,
as each of the demo's two Ray workers runs it), a few steps after a warm-up, each loss in its own
process (the allocator's state and the peak RSS are per process). Prints seconds, user and
system CPU and minor page faults per step, the peak RSS, and the ratios.

    python benchmarks/benchmark_cpu_step.py [--seqs 512,2048] [--rows 4] [--steps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(loss_kind: str, seq_len: int, rows: int, steps: int, threads: int) -> dict:
    """Run in a child process: per-step figures of `steps` steps after one warm-up step."""
    import torch
    import torch.nn.functional as F

    from yxanul_ray import step as step_module
    from yxanul_ray.lm_loss import IGNORE
    from yxanul_ray.model import build_model
    from yxanul_ray.presets import resolve_shape
    from yxanul_ray.specs import OptimizerSpec

    if loss_kind == "logits":  # what the CPU step did before lm_loss.py
        def logits_loss(model, raw_model, x, y, *, amp, fp8_recipe=None):
            logits = model(x)
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                                   reduction="sum")

        step_module.summed_loss = logits_loss
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = resolve_shape("demo", {})
    model = build_model(shape, "torch")
    optimizer = step_module.make_optimizer(model, OptimizerSpec(), "cpu")
    tokens = torch.randint(0, shape.vocab_size, (rows, seq_len + 1))

    def one_step():
        step_module.train_step(step_module.Trainee(model, model, optimizer), tokens, step_module.StepSettings(),
                               lr=1e-3, global_valid=rows * seq_len)

    one_step()
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        one_step()
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"s": wall / steps, "user": (after.ru_utime - before.ru_utime) / steps,
            "sys": (after.ru_stime - before.ru_stime) / steps,
            "faults": (after.ru_minflt - before.ru_minflt) / steps, "peak_gib": after.ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="512,2048")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, seq = args.child.split(":")
        print(json.dumps(measure(kind, int(seq), args.rows, args.steps, args.threads)))
        return
    print(f"demo model, {args.rows} rows per step, {args.threads} torch thread(s), {args.steps} steps after a warm-up")
    for seq in (int(s) for s in args.seqs.split(",")):
        got = {}
        for kind in ("logits", "sliced"):
            out = subprocess.run([sys.executable, __file__, "--child", f"{kind}:{seq}", "--rows", str(args.rows),
                                  "--steps", str(args.steps), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            got[kind] = r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  seq {seq:>5} {kind:>6} loss: {r['s']:.2f} s/step (user {r['user']:.2f}, sys {r['sys']:.2f}), "
                  f"{r['faults']:,.0f} minor faults/step, peak RSS {r['peak_gib']:.2f} GiB")
        a, b = got["logits"], got["sliced"]
        print(f"  seq {seq:>5}: sliced is {a['s'] / b['s']:.2f}x faster, peak RSS {a['peak_gib'] / b['peak_gib']:.1f}x "
              "smaller")


if __name__ == "__main__":
    main()
