"""How much of the orchestration overhead is Ray Train and how much Ray Data (a diagnostic,
not a test).

Runs the job exactly as jobs/train.py does (local Ray, coordinator, TorchTrainer, the real train
loop with its validation, checkpoints and logs) except that each stage's batches come from
yxanul_ray.local_data, made in the train worker's own process, instead of from the Ray Data
pipeline. One train worker only: local_data makes world-size-1 batches. Compare its time with
`python benchmarks/benchmark_orchestration.py --set run.workers=1` (the plain loop and the full Ray path):
the same batches, so the final validation losses are equal in all three.

    python benchmarks/benchmark_without_ray_data.py [--config configs/demo.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import sys
import time


class _Stage:
    """A stage's batches, made ahead in process, with what the train loop reads of StageBatches."""

    def __init__(self, rows: list, schedule, source_ids: dict[str, int]):
        self.rows, self.schedule, self.source_ids = rows, schedule, source_ids

    def __iter__(self):
        return iter(self.rows)


def train_loop_on_local_data(config: dict) -> None:
    import yxanul_ray.train_loop as loop
    from yxanul_ray.config import job_from_dict
    from yxanul_ray.cursors import SourceCursor
    from yxanul_ray.hub import resolve_files
    from yxanul_ray.local_data import local_stage
    from yxanul_ray.tokenizer import load_tokenizer

    job = job_from_dict(config["job"], config["job"].get("path", "<job>"))
    t0 = time.perf_counter()
    files = {s: resolve_files(spec) for s, spec in job.sources.items()}
    eos_id = load_tokenizer(job.data.tokenizer).eos_id
    stages, cursors = [], {}
    for k in range(len(job.curriculum.stages)):
        batches, sources = local_stage(job, k, cursors, files, eos_id)
        stages.append(_Stage(list(batches), batches.schedule, batches.source_ids))
        cursors = {**cursors, **{s: SourceCursor.from_dict(src.end_report()["cursor"]) for s, src in sources.items()}}
    print(f"all stages' batches made in process in {time.perf_counter() - t0:.2f} s", flush=True)

    class LocalPrefetch:
        def __init__(self, coord, rank, group, stage, start_step):
            s = stages[stage]
            self._stage = _Stage(s.rows[start_step:], s.schedule, s.source_ids)

        def result(self):
            return self._stage

    loop.Prefetch = LocalPrefetch  # the one thing changed: where a stage's batches come from
    loop.train_loop_per_worker(config)


def main() -> None:
    from common import benchmark_job

    from yxanul_ray.launch import run_training

    job, _, _ = benchmark_job(__doc__.splitlines()[0], forced=("run.workers=1",))
    t0 = time.perf_counter()
    rc = run_training(job, train_loop=train_loop_on_local_data)
    print(f"Ray Train without Ray Data, from starting Ray to exit: {time.perf_counter() - t0:.1f} s (rc {rc})",
          flush=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
