"""A train worker's parts made once per start of its group: the model (seeded, wrapped, compiled),
the group's id, and the prefetch of a stage's batches on a background thread."""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

import ray
import ray.train
import ray.train.collective
import torch

from yxanul_ray.model import build_model, compile_model
from yxanul_ray.precision import make_recipe
from yxanul_ray.specs import JobSpec
from yxanul_ray.stage_data import StageBatches
from yxanul_ray.step import make_optimizer

if TYPE_CHECKING:
    from yxanul_ray.train_loop import Run


def worker_group_id() -> str:
    """An id for this start of the worker group, the same on every rank (rank 0's, through Ray
    Train's own broadcast, whatever the torch backend): the coordinator hands all ranks of one
    group the same build of a stage, and a group Ray Train restarted after a failure fresh ones."""
    return ray.train.collective.broadcast_from_rank_zero(uuid.uuid4().hex)


class Prefetch:
    """Fetches a stage's iterators from the coordinator and primes them on a background thread."""

    def __init__(self, run: Run, group: str, stage: int, start_step: int):
        self._result: StageBatches | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(run, group, stage, start_step), daemon=True)
        self._thread.start()

    def _run(self, run: Run, group: str, stage: int, start_step: int) -> None:
        try:
            got = ray.get(run.coord.stage_input.remote(stage, run.rank, start_step, group, run.incarnation))
            batches = StageBatches(got["iterator"], got["schedule"], got["source_ids"], got["start_step"])
            batches.prime()
            self._result = batches
        except BaseException as e:  # noqa: BLE001 - re-raised on the training thread
            self._error = e

    def result(self) -> StageBatches:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def worker_model(job: JobSpec, world: int, device):
    """A train worker's model as it trains, before any data: (the model, the model it steps
    through: DDP-wrapped for more than one worker and compiled where the config says, its
    optimizer, its FP8 recipe or None). Seeded first, so every rank starts from the same weights."""
    torch.manual_seed(job.run.seed)
    raw_model = build_model(job.model.shape, job.model.backend, device)
    model = ray.train.torch.prepare_model(raw_model) if world > 1 else raw_model
    if job.model.compile:
        model = compile_model(model)
    m = job.model
    fp8_recipe = make_recipe(m.fp8_recipe, m.fp8_format, m.fp8_amax_history_len) if raw_model.backend == "te" else None
    return raw_model, model, make_optimizer(raw_model, job.optimizer, device), fp8_recipe
