"""Orchestration overhead on this machine's CPU (a benchmark, not a test).

Runs the demo curriculum through the real Ray path (jobs/train.py: coordinator, Ray Data,
TorchTrainer with the config's workers) and the same model on the same batch shapes (every stage's
seq_len and global batch, the same number of steps) in a plain in-process loop on random tokens,
with as many torch threads as the Ray path's train workers have together, once before and once
after the Ray path (their mean is the yardstick; both are printed), then prints: the ratio
of the two (target <= 1.10x), the time from launch to the first batch in hand, each stage switch's
gap (target < 1 s; a cold per-stage pipeline costs 7-10 s here), and where the Ray path's time
went: start-up, each stage's steps against the plain loop's, the boundaries, the teardown.

    python jobs/benchmark_orchestration.py [--config configs/demo.yaml] [--set KEY=VALUE ...]

`--set run.workers=1` measures the case of a node with cores to spare for the data side (as on
any GPU node): one train worker on one thread, the other core left to Ray and the pipeline.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def train_threads(job) -> int:
    """Torch threads of the Ray path's train workers, all together: Ray gives each worker
    max(1, floor(its CPUs)) (OMP_NUM_THREADS), so the plain loop gets the same compute."""
    return job.run.workers * max(1, math.floor(job.run.cpus_per_worker))


def plain_loop_stage_seconds(job, threads: int) -> list[float]:
    """The same model, optimizer step and batch shapes, no Ray and no data pipeline: seconds per stage."""
    import torch

    from yxanul_ray.curriculum import plan_curriculum
    from yxanul_ray.model import build_model
    from yxanul_ray.step import make_optimizer, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = job.model.shape
    model = build_model(shape, "torch")
    optimizer = make_optimizer(model, job.optimizer, "cpu")
    seconds = []
    for plan in plan_curriculum(job.curriculum, 1):
        start = time.perf_counter()
        for k in range(plan.steps):
            rows = plan.step_rows(k)
            tokens = torch.randint(0, shape.vocab_size, (rows, plan.seq_len + 1))
            train_step(model, model, optimizer, tokens, lr=1e-3, global_valid=plan.step_tokens(k), rank=0, world=1,
                       micro_batch=None, grad_clip=job.optimizer.grad_clip, amp=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    from yxanul_ray.config import load_job
    from yxanul_ray.driver import prepare_demo_corpus

    prepare_demo_corpus(args.config, args.overrides)
    job = load_job(args.config, args.overrides)
    threads = train_threads(job)
    # The plain loop runs before and after the Ray path: on a shared machine its time moved by
    # a quarter between runs, and two runs bracketing the Ray path show how much it moved here.
    plain_before = plain_loop_stage_seconds(job, threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "jobs/train.py", "--config", args.config, *sum(
            (["--set", o] for o in args.overrides), []), "--set", f"run.storage_path={tmp}"], cwd=REPO,
            capture_output=True, text=True)
        ray_s = time.perf_counter() - t0
    out = ANSI.sub("", proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(out[-4000:])
        sys.exit(1)
    first = re.search(r"first batch in hand ([\d.]+) s after the job started", out)
    switches = re.findall(r"stage switch: first batch of stage \d+ ([\d.]+) s .*?\(([\d.]+) s validation, "
                          r"([\d.]+) s checkpoint, ([\d.]+) s waiting for data", out)
    ray_stage_s = [float(x) for x in re.findall(r"stage time: \d+ steps in ([\d.]+) s", out)]
    plain_after = plain_loop_stage_seconds(job, threads)
    plain_stage_s = [(a + b) / 2 for a, b in zip(plain_before, plain_after)]
    plain_s = sum(plain_stage_s)
    gaps = [float(g) for g, *_ in switches]
    first_s = float(first.group(1)) if first else float("nan")
    print(f"config: {args.config} ({job.curriculum.target_tokens:,} tokens, {job.run.workers} Ray worker(s), "
          f"{threads} torch thread(s) in all); machine: {os.cpu_count()} cores")
    print(f"plain in-process loop (same model, batch shapes, steps; random tokens; {threads} thread(s)): "
          f"{plain_s:.1f} s, the mean of {sum(plain_before):.1f} s before the Ray path and {sum(plain_after):.1f} s "
          "after it")
    print(f"Ray path, launch to exit: {ray_s:.1f} s -> ratio {ray_s / plain_s:.2f}x (target <= 1.10x)")
    print(f"Ray path, first batch to exit: {ray_s - first_s:.1f} s -> ratio {(ray_s - first_s) / plain_s:.2f}x")
    print(f"time to first batch after launch: {first_s:.1f} s")
    if gaps:
        print("stage switch gaps, last step to next stage's first batch (s): " + ", ".join(f"{g:.2f}" for g in gaps)
              + f"; max {max(gaps):.2f} s (target < 1 s)")
        print("  each as validation + checkpoint + waiting for the new stage's data (s): "
              + ", ".join(f"{v}+{c}+{w}" for _, v, c, w in switches)
              + f"; max data wait {max(float(w) for *_, w in switches):.2f} s")
    else:
        print("no stage switch gaps found")
    if len(ray_stage_s) != len(plain_stage_s):
        print(f"found {len(ray_stage_s)} stage times in the Ray path's log, expected {len(plain_stage_s)}")
        return
    print("where the Ray path's time went (s):")
    print(f"  {'stage':>5} {'seq_len':>7} {'plain':>7} {'Ray':>7} {'ratio':>6}")
    for k, (st, p, r) in enumerate(zip(job.curriculum.stages, plain_stage_s, ray_stage_s)):
        print(f"  {k + 1:>5} {st.seq_len:>7} {p:>7.2f} {r:>7.2f} {r / p:>5.2f}x")
    steps_s = sum(ray_stage_s)
    teardown_s = ray_s - first_s - steps_s - sum(gaps)
    print(f"  start-up {first_s:.1f} + steps {steps_s:.1f} (plain {plain_s:.1f}, {steps_s / plain_s:.2f}x) + "
          f"boundaries {sum(gaps):.1f} + last stage's boundary and teardown {teardown_s:.1f} = {ray_s:.1f}")
    half = len(plain_stage_s) // 2
    late_ray, late_plain = sum(ray_stage_s[half:]), sum(plain_stage_s[half:])
    print(f"  steps of stages {half + 1}-{len(plain_stage_s)} only: {late_ray:.1f} vs {late_plain:.1f} s -> "
          f"{late_ray / late_plain:.2f}x")


if __name__ == "__main__":
    main()
