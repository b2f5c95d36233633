"""Orchestration overhead on this machine's CPU (a benchmark, not a test).

Runs the demo curriculum through the real Ray path (jobs/train.py: coordinator, Ray Data,
TorchTrainer with the config's workers) and the same work in one plain in-process loop: the Ray
path's very batches made in that process (yxanul_ray.local_data: the same read, tokenize, pack
and mix functions, no Ray; each step the rows all the workers take together), the same model,
seed, learning rates and optimizer steps, the same validation and a checkpoint at every stage
boundary, with as many torch threads as the Ray path's train workers have together. The plain
loop runs once before and once after the Ray path (their mean is the yardstick; both are
printed). Then it prints: the ratio of the two (target <= 1.10x) and the ratio against the plain
loop's steps alone (what earlier versions timed, on random tokens), the time from launch to the
first batch in hand, each stage switch's gap (target < 1 s; a cold per-stage pipeline costs 7-10
s here), both runs' final validation losses (equal with one worker, a check that the batches are
the same; with more, DDP's sums round otherwise), and where the Ray path's time went: start-up,
each stage's steps against the plain loop's data and steps, the boundaries, the teardown. Last,
Ray Train's floor on this machine (benchmarks/ray_train_floor.py: the same Ray start and TorchTrainer
with no data and no steps, launch to exit) and the ratio it alone sets.

    python benchmarks/benchmark_orchestration.py [--config configs/demo.yaml] [--set KEY=VALUE ...]
        [--target-tokens N] [--address http://127.0.0.1:8265]

`--set run.workers=1` measures the case of a node with cores to spare for the data side (as on
any GPU node): one train worker on one thread, the other core left to Ray and the pipeline.

`--target-tokens N` scales every stage's budget to N in the plain loop and the Ray path, as
jobs/train.py's flag does: the Ray path's fixed costs (start-up, one split per stage, teardown)
weigh less in a longer run, and runs of two lengths separate them from the part that grows with
the tokens.

`--address http://127.0.0.1:8265` measures the job as it is run on a cluster: the Ray path and the
floor are submitted to that running Ray head with the README's `ray job submit` command (the
repo's runtime_env: its working dir uploaded, without `data`, so the job builds its own demo
corpus, ~2 s) and timed from submission to the client's exit. Ray's start and shutdown are then
the cluster's, not the job's, and the head's daemons stay up under the plain loop too. The first
batch is timed by when its log line reaches the client (Ray's log tail adds up to ~1 s).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def train_threads(job) -> int:
    """Torch threads of the Ray path's train workers, all together: Ray gives each worker
    max(1, floor(its CPUs)) (OMP_NUM_THREADS), so the plain loop gets the same compute."""
    return job.run.workers * max(1, math.floor(job.run.cpus_per_worker))


def main() -> None:
    import argparse

    from common import benchmark_job

    from yxanul_ray.reference_loop import run_reference

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--address", help="a running Ray head's job API, to submit the Ray path to")
    job, config, overrides = benchmark_job(__doc__.splitlines()[0], parents=(ap,))
    args, _ = ap.parse_known_args()
    threads = train_threads(job)
    # The plain loop runs before and after the Ray path: on a shared machine its time moved by
    # a quarter between runs, and two runs bracketing the Ray path show how much it moved here.
    plain_before = run_reference(job, threads)
    # Each run's time as it ends: a run cut short by a time limit still leaves these.
    print(f"plain loop, before: {plain_totals_s(plain_before, plain_before)[0]:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ray_run = run_timed("jobs/train.py", config, [*overrides, f"run.storage_path={tmp}"], args.address)
    print(f"Ray path: {ray_run.wall_s:.1f} s", flush=True)
    floor = run_timed("benchmarks/ray_train_floor.py", config, overrides, args.address)
    print(f"floor: {floor.wall_s:.1f} s", flush=True)
    plain_after = run_reference(job, threads)
    report(job, config, threads, ray_run, plain_before, plain_after)
    report_floor(floor.wall_s, ray_run.wall_s, plain_before, plain_after, ray_run.start_word)


class TimedRun:
    """One run of a job script, its output lines stamped with their arrival from its start."""

    def __init__(self, command: list[str], start_word: str):
        self.start_word = start_word  # "launch" (a process here) or "submission" (ray job submit)
        self.lines: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "RAY_AUTH_MODE": "token"})
        for line in proc.stdout:
            self.lines.append((time.perf_counter() - t0, ANSI.sub("", line)))
        self.returncode = proc.wait()
        self.wall_s = time.perf_counter() - t0
        self.out = "".join(line for _, line in self.lines)

    def first_stamp_s(self, text: str) -> float:
        """When the first line holding `text` arrived (nan if none did)."""
        return next((t for t, line in self.lines if text in line), float("nan"))


def run_timed(script: str, config: str, overrides: list[str], address: str | None) -> TimedRun:
    """`script` run as a process here (it starts its own Ray) or, with `address`, submitted to
    that running Ray head as the README says; exits on failure with the run's last output."""
    args = [script, "--config", config, *sum((["--set", o] for o in overrides), [])]
    if address is None:
        run = TimedRun([sys.executable, *args], "launch")
    else:
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        submission_id = f"yxanul-benchmark-{uuid.uuid4().hex[:8]}"
        try:
            run = TimedRun([ray_cli, "job", "submit", "--address", address, "--submission-id", submission_id,
                            "--runtime-env", "configs/runtime_env.yaml", "--", "python", *args], "submission")
        finally:
            # Ending the client does not end the job (a no-op for a job that has finished).
            subprocess.run([ray_cli, "job", "stop", "--address", address, submission_id], capture_output=True,
                           env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=120)
    if run.returncode != 0:
        print(run.out[-4000:])
        sys.exit(1)
    return run


def report_floor(floor_s: float, ray_s: float, before, after, start_word: str) -> None:
    plain_s = sum(plain_totals_s(before, after)) / 2
    print(f"Ray Train's floor here: an empty TorchTrainer run (benchmarks/ray_train_floor.py: the same Ray start, "
          f"trainer and workers, the model built, no data, no steps), {start_word} to exit: {floor_s:.1f} s")
    print(f"  -> the lowest ratio any Ray Train job could reach on this work here: "
          f"{(plain_s + floor_s) / plain_s:.2f}x; the Ray path above that floor: {ray_s - floor_s:.1f} s, "
          f"{(ray_s - floor_s) / plain_s:.2f}x the plain loop")


def plain_totals_s(before, after) -> list[float]:
    """The plain loop's two runs, each in all: held-out rows, data, steps and boundaries."""
    return [holdout + sum(p.data_s + p.steps_s + p.boundary_s for p in stages) for holdout, stages in (before, after)]


def report(job, config: str, threads: int, ray_run: TimedRun, before, after) -> None:
    out, ray_s, start_word = ray_run.out, ray_run.wall_s, ray_run.start_word
    driver_first = re.search(r"first batch in hand ([\d.]+) s after the job started", out)
    switches = re.findall(r"stage switch: first batch of stage \d+ ([\d.]+) s .*?\(([\d.]+) s validation, "
                          r"([\d.]+) s checkpoint, ([\d.]+) s waiting for data", out)
    ray_stage_s = [float(x) for x in re.findall(r"stage time: \d+ steps in ([\d.]+) s", out)]
    ray_validation = re.findall(r"validation \(seq_len \d+\): (.*)", out)
    # Each plain-loop figure is the mean of the run before and the run after the Ray path.
    (holdout_before, stages_before), (holdout_after, stages_after) = before, after

    def mean(f) -> list[float]:
        return [(f(a) + f(b)) / 2 for a, b in zip(stages_before, stages_after)]

    data_s, steps_s, boundary_s = mean(lambda p: p.data_s), mean(lambda p: p.steps_s), mean(lambda p: p.boundary_s)
    holdout_s = (holdout_before + holdout_after) / 2
    total = plain_totals_s(before, after)
    plain_s = sum(total) / 2
    plain_steps_s = sum(steps_s)
    gaps = [float(g) for g, *_ in switches]
    first_s = ray_run.first_stamp_s("first batch in hand")
    print(f"config: {config} ({job.curriculum.target_tokens:,} tokens, {job.run.workers} Ray worker(s), "
          f"{threads} torch thread(s) in all); machine: {os.cpu_count()} cores")
    print(f"plain in-process loop, the same work without Ray ({threads} thread(s); the mean of {total[0]:.1f} s "
          f"before the Ray path and {total[1]:.1f} s after it): {plain_s:.1f} s = held-out rows {holdout_s:.1f} + "
          f"the Ray path's batches made in process {sum(data_s):.1f} + steps {plain_steps_s:.1f} + validation and "
          f"checkpoint at the boundaries {sum(boundary_s):.1f}")
    print(f"Ray path, {start_word} to exit: {ray_s:.1f} s -> ratio {ray_s / plain_s:.2f}x (target <= 1.10x)")
    print(f"Ray path, first batch to exit: {ray_s - first_s:.1f} s -> ratio {(ray_s - first_s) / plain_s:.2f}x")
    print(f"  against the plain loop's steps alone ({plain_steps_s:.1f} s; earlier versions of this benchmark "
          f"trained on random tokens and timed only these): {ray_s / plain_steps_s:.2f}x")
    print(f"time to first batch after {start_word}: {first_s:.1f} s (by when its line came; "
          f"{float(driver_first.group(1)) if driver_first else float('nan'):.1f} s by the driver's own clock, "
          "which starts after its imports)")
    if gaps:
        print("stage switch gaps, last step to next stage's first batch (s): " + ", ".join(f"{g:.2f}" for g in gaps)
              + f"; max {max(gaps):.2f} s (target < 1 s)")
        print("  each as validation + checkpoint + waiting for the new stage's data (s): "
              + ", ".join(f"{v}+{c}+{w}" for _, v, c, w in switches)
              + f"; max data wait {max(float(w) for *_, w in switches):.2f} s")
        print("  the plain loop's validation + checkpoint at the same boundaries (s): "
              + ", ".join(f"{b:.2f}" for b in boundary_s[:-1]))
    else:
        print("no stage switch gaps found")
    plain_val = stages_after[-1].validation
    if ray_validation and plain_val:
        ray_val = {s: float(v) for s, v in re.findall(r"(\w+) loss ([\d.]+)", ray_validation[-1])}
        diff = max(abs(ray_val.get(s, float("inf")) - v) for s, v in plain_val.items())
        print("final validation, Ray path: " + ray_validation[-1].strip())
        print("final validation, plain loop: " + ", ".join(f"{s} loss {v:.4f}" for s, v in plain_val.items())
              + f"; largest difference {diff:.4f} ("
              + ("one worker: the same batches and arithmetic, so it should be 0)" if job.run.workers == 1 else
                 f"{job.run.workers} DDP ranks on the same rows: their all-reduce rounds otherwise than one "
                 "process, and training carries the last bits on, so 0 over a short run, close over a long one)"))
    if len(ray_stage_s) != len(steps_s):
        print(f"found {len(ray_stage_s)} stage times in the Ray path's log, expected {len(steps_s)}")
        return
    print("where the Ray path's time went (s; a Ray stage time is its steps, the data made beside them):")
    print(f"  {'stage':>5} {'seq_len':>7} {'plain data':>10} {'plain steps':>11} {'Ray':>7} {'ratio':>6}")
    for k, st in enumerate(job.curriculum.stages):
        plain_k = data_s[k] + steps_s[k]
        print(f"  {k + 1:>5} {st.seq_len:>7} {data_s[k]:>10.2f} {steps_s[k]:>11.2f} {ray_stage_s[k]:>7.2f} "
              f"{ray_stage_s[k] / plain_k:>5.2f}x")
    ray_steps_s = sum(ray_stage_s)
    plain_data_steps = sum(data_s) + plain_steps_s
    teardown_s = ray_s - first_s - ray_steps_s - sum(gaps)
    print(f"  start-up {first_s:.1f} + steps {ray_steps_s:.1f} (plain data and steps {plain_data_steps:.1f}, "
          f"{ray_steps_s / plain_data_steps:.2f}x) + boundaries {sum(gaps):.1f} (plain {sum(boundary_s[:-1]):.1f}) "
          f"+ last stage's boundary and teardown {teardown_s:.1f} = {ray_s:.1f}")
    half = len(steps_s) // 2
    late_ray, late_plain = sum(ray_stage_s[half:]), sum(data_s[half:]) + sum(steps_s[half:])
    print(f"  steps of stages {half + 1}-{len(steps_s)} only: {late_ray:.1f} vs {late_plain:.1f} s -> "
          f"{late_ray / late_plain:.2f}x")


if __name__ == "__main__":
    main()
