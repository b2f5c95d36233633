"""Ray Train's fixed cost on this machine (a diagnostic; the orchestration benchmark runs it).

Launch to exit of the job's Ray path with no data and no steps: the same Ray start (a local
cluster when none runs), the same TorchTrainer (workers, CPUs, gloo/NCCL, storage), and a worker
loop that only builds the model and its optimizer as a train worker does (worker.worker_model),
then returns. What the real job adds on top of this is its own (coordinator, pipelines, steps,
checkpoints); this part is paid by any Ray Train job, so no design of ours goes under it.

    python benchmarks/ray_train_floor.py [--config configs/demo.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import tempfile
import time


def model_only_loop(config: dict) -> None:
    """A train worker up to its first batch, less the data: its model, DDP wrap and optimizer,
    made by the same function the train loop uses."""
    import ray.train
    import ray.train.torch

    from yxanul_ray.config import job_from_dict
    from yxanul_ray.worker import worker_model

    worker_model(job_from_dict(config["job"], "<floor>"), ray.train.get_context().get_world_size(),
                 ray.train.torch.get_device())


def main() -> None:
    import dataclasses

    from common import benchmark_job

    from yxanul_ray.launch import make_trainer, start_ray
    from yxanul_ray.preflight import absolute_paths

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
