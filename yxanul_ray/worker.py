"""A train worker's parts: the model (seeded, wrapped, compiled), the worker group's id, the
prefetch of a stage's batches on a background thread, and the held-out losses every rank
computes its share of."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import ray
import ray.train
import ray.train.collective
import torch

from yxanul_ray.kernels import attention_backends, choose_head_loss
from yxanul_ray.model import build_model, compile_model
from yxanul_ray.precision import make_recipe
from yxanul_ray.specs import JobSpec
from yxanul_ray.stage_data import StageBatches
from yxanul_ray.step import held_out_loss, make_optimizer

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
            got = ray.get(run.coord.stage_input.remote(stage, run.rank, start_step, group, run.incarnation,
                                                       run.world))
            batches = StageBatches(got["iterator"], got["schedule"], got["source_ids"], got["start_step"],
                                   world=got["world"])
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
    raw_model.head_loss, raw_model.kernel_note = choose_head_loss(job.model.head_loss, torch.device(device).type)
    raw_model.attention = attention_backends(job.model.attention, torch.device(device).type)
    model = ray.train.torch.prepare_model(raw_model) if world > 1 else raw_model
    if job.model.compile:
        model = compile_model(model)
    m = job.model
    fp8_recipe = make_recipe(m.fp8_recipe, m.fp8_format, m.fp8_amax_history_len) if raw_model.backend == "te" else None
    return raw_model, model, make_optimizer(raw_model, job.optimizer, device), fp8_recipe


@torch.no_grad()
def held_out_losses(model, rows: dict[str, np.ndarray], rank: int, world: int, device,
                    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """Mean held-out loss per source of `rows`: rank r evaluates every world-th row, and the
    (loss, targets) sums meet in one all-reduce (every rank must call it)."""
    if not rows:
        return {}
    model.eval()
    sums = torch.zeros(2 * len(rows), dtype=torch.float64)
    for i, source_rows in enumerate(rows.values()):
        t = torch.from_numpy(source_rows[rank::world].astype(np.int64)).to(device)
        sums[2 * i], sums[2 * i + 1] = held_out_loss(model, t, amp=device.type == "cuda")
    model.train()
    sums = sum_over_ranks(sums)
    return {s: float(sums[2 * i] / max(1.0, float(sums[2 * i + 1]))) for i, s in enumerate(rows)}


STEP_DIGESTS_ENV = "YXANUL_STEP_DIGESTS"
"""A directory: each rank writes a digest of every row it trains there (StepDigests)."""


class StepDigests:
    """Which rows formed each step, as a rank saw them: a JSON line per step (stage, step in
    stage, rank, world, a short digest and the source id of each row) in its own file, so a run
    resized or resumed on another worker count can be checked row for row against one that was
    not. Off unless YXANUL_STEP_DIGESTS names a directory (tests, debugging)."""

    def __init__(self, directory: str, rank: int):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"rank{rank}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl")
        self.rank = rank

    @classmethod
    def from_environment(cls, rank: int) -> StepDigests | None:
        directory = os.environ.get(STEP_DIGESTS_ENV)
        return cls(directory, rank) if directory else None

    def write(self, stage: int, step_in_stage: int, world: int, batch: dict) -> None:
        rows = [hashlib.sha1(row.tobytes()).hexdigest()[:12] for row in batch["tokens"]]
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "step": step_in_stage, "rank": self.rank, "world": world,
                                "at": time.time(), "rows": rows, "sources": [int(s) for s in batch["source"]]}) + "\n")
