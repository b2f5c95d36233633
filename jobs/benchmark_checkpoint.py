"""What a checkpoint holds training up for (a benchmark, not a test).

Rank 0 used to write each checkpoint (model, AdamW state, generators, trainer state) before
training went on: 3.56 s of a stage switch for the 270m preset on an H200 node. It now takes a
host copy (checkpoint.CheckpointSnapshot) and writes that on Ray Train's upload thread while
training goes on; the copy goes into host buffers kept from one checkpoint to the next (pinned
on a GPU node). This times both on one model with its AdamW state filled, on CUDA where there
is a GPU and on the CPU otherwise, each several times into a fresh directory (the median is
printed), and prints what training waits for before and after, and their ratio.

    python jobs/benchmark_checkpoint.py [--preset 270m] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    import torch

    from yxanul_ray.checkpoint import CheckpointSnapshot, HostStaging, TrainState, save_checkpoint
    from yxanul_ray.config import OptimizerSpec
    from yxanul_ray.model import build_model
    from yxanul_ray.presets import resolve_shape
    from yxanul_ray.step import make_optimizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="270m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(resolve_shape(args.preset, {}), "torch", device)
    optimizer = make_optimizer(model, OptimizerSpec(), device)
    for p in model.parameters():  # one step fills AdamW's two moments, as after any real step
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state_bytes += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                       if isinstance(t, torch.Tensor))
    state, job = TrainState(step=1), {"run": {}}

    def timed(fn) -> float:
        path = tempfile.mkdtemp(prefix="yxanul-bench-ckpt-", dir=args.dir)
        try:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(path)
            return time.perf_counter() - t0
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def save(path: str) -> None:
        save_checkpoint(path, model.state_dict(), optimizer.state_dict(), state, job)

    snapshots: list[CheckpointSnapshot] = []
    staging = HostStaging()  # as rank 0 keeps it from one checkpoint to the next

    def take(path: str) -> None:
        snapshots.append(CheckpointSnapshot.take(model.state_dict(), optimizer.state_dict(), state, job, staging))

    def write(path: str) -> None:
        snapshots.pop().write(path)

    save_s, take_s, write_s = [], [], []
    for _ in range(args.repeats):
        save_s.append(timed(save))
        take_s.append(timed(take))
        write_s.append(timed(write))
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.preset} preset on {device_name}: {state_bytes / 1e9:.2f} GB of weights and AdamW state; "
          f"median of {args.repeats}, written under {args.dir}")
    print(f"  before: the checkpoint written in place (save_checkpoint)   {statistics.median(save_s):7.2f} s "
          f"({', '.join(f'{s:.2f}' for s in save_s)})")
    print(f"  now:    the host copy training waits for (snapshot)      {statistics.median(take_s):7.2f} s "
          f"({', '.join(f'{s:.2f}' for s in take_s)}; the first allocates the kept buffers)")
    print(f"          its write, on Ray Train's upload thread           {statistics.median(write_s):7.2f} s "
          f"({', '.join(f'{s:.2f}' for s in write_s)})")
    print(f"  training waits {statistics.median(take_s) / statistics.median(save_s):.2f}x as long as before")


if __name__ == "__main__":
    main()
