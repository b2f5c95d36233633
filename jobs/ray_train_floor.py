"""Ray Train's fixed cost on this machine (a diagnostic; the orchestration benchmark runs it).

Launch to exit of the job's Ray path with no data and no steps: the same Ray start (a local
cluster when none runs), the same TorchTrainer (workers, CPUs, gloo/NCCL, storage), and a worker
loop that only builds the model and its optimizer as a train worker does, wrapped for DDP, then
returns. What the real job adds on top of this is its own (coordinator, pipelines, steps,
checkpoints); this part is paid by any Ray Train job, so no design of ours goes under it.

    python jobs/ray_train_floor.py [--config configs/demo.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_only_loop(config: dict) -> None:
    """A train worker up to its first batch, less the data: model, DDP wrap, optimizer."""
    import ray.train
    import ray.train.torch
    import torch

    from yxanul_ray.config import job_from_dict
    from yxanul_ray.model import build_model
    from yxanul_ray.step import make_optimizer

    job = job_from_dict(config["job"], "<floor>")
    torch.manual_seed(job.run.seed)
    device = ray.train.torch.get_device()
    model = build_model(job.model.shape, job.model.backend, device)
    if ray.train.get_context().get_world_size() > 1:
        ray.train.torch.prepare_model(model)
    make_optimizer(model, job.optimizer, device)


def main() -> None:
    import dataclasses

    from yxanul_ray.driver import absolute_paths, benchmark_job, make_trainer, start_ray

    launched = time.perf_counter()
    job, _, _ = benchmark_job(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        job = absolute_paths(dataclasses.replace(job, run=dataclasses.replace(job.run, storage_path=tmp)))
        start_ray()
        result = make_trainer(job, model_only_loop, "ray-train-floor", {"job": job.to_dict()}).fit()
        if result.error:
            raise SystemExit(f"the empty TorchTrainer run failed: {result.error}")
    print(f"empty TorchTrainer run ({job.run.workers} worker(s)): {time.perf_counter() - launched:.1f} s in this "
          "process", flush=True)


if __name__ == "__main__":
    main()
