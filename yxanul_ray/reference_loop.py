"""The job's work in one process without Ray: the yardstick of the orchestration benchmark and
the oracle of the Ray path in the tests.

The Ray path's very batches, made here (local_data: the same read, tokenize, pack and mix
functions, each step's rows those all the job's train workers take together), the same model,
seed, learning rates and optimizer steps, the same validation and a checkpoint at every stage
boundary. With one train worker the Ray path does the same arithmetic on the same rows, so its
validation losses equal these; with more, DDP sums the same gradients in another order (the
last bits differ, and training carries that on).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from yxanul_ray.checkpoint import TrainState, save_checkpoint
from yxanul_ray.curriculum import lr_at, plan_curriculum
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.holdout import sized_holdouts
from yxanul_ray.hub import resolve_files
from yxanul_ray.local_data import holdout_rows, local_global_batches
from yxanul_ray.model import build_model
from yxanul_ray.specs import JobSpec
from yxanul_ray.step import StepSettings, Trainee, held_out_loss, make_optimizer, train_step
from yxanul_ray.tokenizer import load_tokenizer


@dataclass
class ReferenceStage:
    data_s: float
    """Making the stage's batches in this process (read, tokenize, pack, mix)."""
    steps_s: float
    """The optimizer steps alone."""
    boundary_s: float
    """Validation and a checkpoint after the stage."""
    validation: dict[str, float]


def run_reference(job: JobSpec, threads: int) -> tuple[float, list[ReferenceStage]]:
    """Train `job` on CPU with `threads` torch threads (put back after). Returns (seconds making
    the held-out rows, per-stage figures)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(job)
    finally:
        torch.set_num_threads(before)


def _run(job: JobSpec) -> tuple[float, list[ReferenceStage]]:
    torch.manual_seed(job.run.seed)  # as the train workers do before building the model
    model = build_model(job.model.shape, "torch")
    optimizer = make_optimizer(model, job.optimizer, "cpu")
    cur, opt = job.curriculum, job.optimizer
    t0 = time.perf_counter()
    files = {s: resolve_files(spec, job.data.hf_endpoint) for s, spec in job.sources.items()}
    tokenizer = load_tokenizer(job.data.tokenizer)
    eos_id = tokenizer.eos_id
    job, _ = sized_holdouts(job, files, tokenizer)  # as the driver sizes the run's held-out sets
    cur = job.curriculum
    held_out = holdout_rows(job, files, eos_id, cur.validation_seq_len, cur.validation_rows) \
        if cur.validation_rows else {}
    holdout_s = time.perf_counter() - t0
    cursors: dict[str, SourceCursor] = {}
    state = TrainState(tokens_by_source=dict.fromkeys(job.sources, 0))
    stages = []
    for k, plan in enumerate(plan_curriculum(cur)):
        stage = cur.stages[k]
        data_s = steps_s = 0.0
        batch_iter, sources = local_global_batches(job, k, cursors, files, eos_id, 1)
        for step in range(plan.steps):
            t0 = time.perf_counter()
            batch = next(batch_iter)
            t1 = time.perf_counter()
            global_valid = plan.step_tokens(step)
            lr = lr_at(opt, cur.target_tokens, state.tokens, stage.lr_scale)
            settings = StepSettings(micro_batch=stage.micro_batch_size, grad_clip=opt.grad_clip)
            loss = train_step(Trainee(model, model, optimizer), torch.from_numpy(batch["tokens"].astype(np.int64)),
                              settings, lr=lr, global_valid=global_valid)
            float(loss)  # the train loop reads every step's loss too
            state.step, state.tokens = state.step + 1, state.tokens + global_valid
            data_s, steps_s = data_s + t1 - t0, steps_s + time.perf_counter() - t1
        t0 = time.perf_counter()
        cursors = {**cursors, **{s: SourceCursor.from_dict(src.end_report()["cursor"]) for s, src in sources.items()}}
        validation = _validate(model, held_out)
        state.stage += 1
        with tempfile.TemporaryDirectory() as ckpt:
            save_checkpoint(ckpt, model.portable_state_dict(), optimizer.state_dict(), state, job.to_dict())
        stages.append(ReferenceStage(data_s, steps_s, time.perf_counter() - t0, validation))
    return holdout_s, stages


def _validate(model, held_out: dict[str, np.ndarray]) -> dict[str, float]:
    model.eval()
    losses = {}
    for source, rows in held_out.items():
        loss_sum, targets = held_out_loss(model, torch.from_numpy(rows.astype(np.int64)), amp=False)
        losses[source] = loss_sum / max(1, targets)
    model.train()
    return losses
