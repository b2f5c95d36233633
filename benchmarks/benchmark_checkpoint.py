"""What a checkpoint holds training up for (a benchmark, not a test).

Rank 0 used to write each checkpoint (model, AdamW state, generators, trainer state) before
training went on: 3.56 s of a stage switch for the 270m preset on an H200 node. It now takes a
host copy (snapshot.CheckpointSnapshot) and writes that on Ray Train's upload thread while
training goes on. The copy goes into host buffers kept from one checkpoint to the next (pinned
on a GPU node), made on a thread of their own before the worker's first step, while it waits for
its first batch (making them was 2.7 s of the first snapshot's 2.7 s on an H200). This times, on
one model with its AdamW state filled, on CUDA where there is a GPU and on the CPU otherwise:
  - making the buffers before the first step, from AdamW's state as it will be;
  - the same made beside training steps instead, and those steps against the same steps alone
    (why not after the first step: CUDA calls wait while pages are pinned);
  - the first snapshot into the buffers made ahead, and one into buffers made then;
  - the checkpoint written in place, later snapshots and their writes, each several times into
    a fresh directory (the median is printed);
and prints what training waits for before and after, and their ratio.

    python benchmarks/benchmark_checkpoint.py [--preset 270m] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time


def main() -> None:
    import torch

    from yxanul_ray.checkpoint import TrainState, save_checkpoint
    from yxanul_ray.model import build_model
    from yxanul_ray.presets import resolve_shape
    from yxanul_ray.snapshot import CheckpointSnapshot, HostStaging
    from yxanul_ray.specs import OptimizerSpec
    from yxanul_ray.step import StepSettings, Trainee, adamw_state_like, make_optimizer, train_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="270m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(resolve_shape(args.preset, {}), "torch", device)
    optimizer = make_optimizer(model, OptimizerSpec(), device)
    # Small steps, so that many fall inside the buffers' making: a stall there would show.
    rows, seq_len = (16, 1024) if device.type == "cuda" else (1, 64)
    tokens = torch.randint(0, model.shape.vocab_size, (rows, seq_len + 1), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        train_step(Trainee(model, model, optimizer), tokens, StepSettings(amp=device.type == "cuda"), lr=1e-5,
                   global_valid=rows * seq_len)

    # As rank 0 on a GPU: the buffers made before the first step (no training to slow yet).
    reserved = HostStaging()
    t0 = time.perf_counter()
    CheckpointSnapshot.reserve(model.state_dict(), adamw_state_like(optimizer), reserved)
    reserved.wait_reserved()
    reserve_s = time.perf_counter() - t0

    for _ in range(3):  # warm-up; fills AdamW's two moments, as after any real step
        step()
    sync()
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state_bytes += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                       if isinstance(t, torch.Tensor))
    state, job = TrainState(step=1), {"run": {}}

    def snapshot(staging: HostStaging) -> CheckpointSnapshot:
        return CheckpointSnapshot.take(model.state_dict(), optimizer.state_dict(), state, job, staging)

    # The alternative: a second set of buffers made on a thread while training steps go on.
    beside = HostStaging()
    t0 = time.perf_counter()
    CheckpointSnapshot.reserve(model.state_dict(), optimizer.state_dict(), beside)
    steps_beside = 0
    while steps_beside == 0 or beside.reserving():  # one step at least, for the ratio
        step()
        sync()  # each step whole inside the window, as the count says
        steps_beside += 1
    beside_s = time.perf_counter() - t0
    beside.wait_reserved()
    beside_reserve_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps_beside):
        step()
        sync()
    alone_s = time.perf_counter() - t0

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    first_reserved_s = timed(lambda: snapshot(reserved))
    first_unreserved_s = timed(lambda: snapshot(HostStaging()))  # a third set: `beside` is not freed to reuse

    def in_fresh_dir(fn) -> float:
        path = tempfile.mkdtemp(prefix="yxanul-bench-ckpt-", dir=args.dir)
        try:
            return timed(lambda: fn(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)

    save_s, take_s, write_s = [], [], []
    taken: list[CheckpointSnapshot] = []  # one at a time, as in training
    for _ in range(args.repeats):
        save_s.append(in_fresh_dir(lambda path: save_checkpoint(path, model.state_dict(), optimizer.state_dict(),
                                                                 state, job)))
        take_s.append(timed(lambda: taken.append(snapshot(reserved))))  # the kept buffers
        write_s.append(in_fresh_dir(lambda path: taken.pop().write(path)))

    def listed(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    save_med, take_med = statistics.median(save_s), statistics.median(take_s)
    print(f"{args.preset} preset on {device_name}: {state_bytes / 1e9:.2f} GB of weights and AdamW state; "
          f"median of {args.repeats}, written under {args.dir}")
    print(f"  before: the checkpoint written in place (save_checkpoint)     {save_med:7.2f} s ({listed(save_s)})")
    print(f"  now:    host buffers made before the first step               {reserve_s:7.2f} s (while the worker "
          "waits for its first batch)")
    print(f"          (made beside training steps instead: {beside_reserve_s:.2f} s, and the {steps_beside} steps "
          f"of {rows}x{seq_len} tokens meanwhile took {beside_s:.2f} s, alone {alone_s:.2f} s: "
          f"{beside_s / alone_s:.2f}x)")
    print(f"          the first snapshot, into those buffers                {first_reserved_s:7.2f} s "
          f"(into buffers made then: {first_unreserved_s:.2f} s)")
    print(f"          later snapshots, into the kept buffers                {take_med:7.2f} s ({listed(take_s)})")
    print(f"          the write, on Ray Train's upload thread                {statistics.median(write_s):7.2f} s "
          f"({listed(write_s)})")
    print(f"  training waits {take_med / save_med:.2f}x as long as before ({first_reserved_s / save_med:.2f}x at the "
          f"first checkpoint, {first_unreserved_s / save_med:.2f}x had its buffers not been made ahead)")


if __name__ == "__main__":
    main()
