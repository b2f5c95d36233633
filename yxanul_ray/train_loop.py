"""`train_loop_per_worker`: what each Ray Train worker runs. Reads like a table of contents; the
pieces live in small helpers below and in the pure modules (curriculum, accounting, mixing)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import ray
import ray.train
import ray.train.collective
import torch

from yxanul_ray.accounting import step_tokens_by_source
from yxanul_ray.checkpoint import TrainState, load_state, load_tensors, restore_rng
from yxanul_ray.config import validated_job
from yxanul_ray.coordinator import SourceFilesChanged
from yxanul_ray.curriculum import lr_at, plan_curriculum
from yxanul_ray.errors import CannotContinue, cannot_continue
from yxanul_ray.evaluation import TrainClock, point_crossed, weights_digest
from yxanul_ray.hub import Redacted
from yxanul_ray.metrics import Metrics
from yxanul_ray.raycluster import quiet_ray_train
from yxanul_ray.snapshot import STAGING_PREFIX, CheckpointSnapshot, HostStaging, remove_stale_staging_dirs, staging_dir
from yxanul_ray.specs import JobSpec
from yxanul_ray.stage_data import STAGES_AHEAD
from yxanul_ray.step import StepSettings, Trainee, adamw_state_like, train_step
from yxanul_ray.storage import StorageError, artifacts_dir, storage_join, upload
from yxanul_ray.worker import Prefetch, StepDigests, held_out_losses, worker_group_id, worker_model


def train_loop_per_worker(config: dict) -> str | None:
    """Trains to the target; returns None, or why the run cannot go on where a restart would
    fail the same way (the driver ends the run with it): the coordinator refused the checkpoint
    restored, or the data raised errors.CannotContinue. Every rank meets such a failure at the
    same point (one checkpoint; a stage's batches are made a whole step at a time), so every
    rank returns and no collective waits."""
    quiet_ray_train()
    job = validated_job(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    coord = config["coordinator"]
    run = Run(job, rank, world, coord, config["run_dir"], config.get("started_at"),
              tracker=(config.get("run_name") or os.path.basename(config["run_dir"]), config.get("tracker_env")))
    try:
        state = run.restore(ray.train.get_checkpoint(), config.get("resume_from"))
    except SourceFilesChanged as refused:
        return str(getattr(refused, "cause", None) or refused)
    except Exception as e:  # the coordinator recorded a failure no restart fixes (Run.report)
        if (message := cannot_continue(e)) is None:
            raise
        return message
    try:
        train_stages(job, run, state, world)
    except Exception as e:
        if (message := cannot_continue(e)) is None:
            raise  # a restart may fix it: Ray Train restarts the group from the last checkpoint
        return message
    run.finish(state)
    return None


def train_stages(job: JobSpec, run: Run, state: TrainState, world: int) -> None:
    """Every stage from `state` on, to the target."""
    plans = plan_curriculum(job.curriculum)
    group = worker_group_id()
    ahead = {state.stage: Prefetch(run, group, state.stage, state.step_in_stage)}
    run.reserve_checkpoint_buffers()  # while the first batch is on its way

    while state.stage < len(plans):
        # --- stage setup ---
        plan, stage = plans[state.stage], job.curriculum.stages[state.stage]
        batches = ahead.pop(state.stage).result()
        # Hide the next switches: fetch and start the next stages' data now (STAGES_AHEAD).
        for k in range(state.stage + 1, min(state.stage + 1 + STAGES_AHEAD, len(plans))):
            if k not in ahead:  # once per stage: each split of a build is handed out once
                ahead[k] = Prefetch(run, group, k, 0)
        run.stage_banner(state, plan)
        tokens_before = state.tokens
        for batch in batches:
            run.note_first_batch(state)
            if run.digests is not None:
                run.digests.write(state.stage, state.step_in_stage, world, batch)
            # --- train step ---
            step_in_stage = state.step_in_stage
            global_valid = plan.step_tokens(step_in_stage)
            lr = lr_at(job.optimizer, job.curriculum.target_tokens, state.tokens, stage.lr_scale)
            loss_sum = run.train_step(batch["tokens"], global_valid, lr, stage)
            # --- accounting/logging ---
            counts = batches.step_counts[step_in_stage]  # the whole step's, every rank's slice together
            tokens_before = state.tokens
            run.account(state, counts, global_valid, stage.seq_len, loss_sum)
            state.step_in_stage += 1
            if state.step % job.run.log_every_steps == 0:
                run.log(state, lr, plan)
            # --- stage switch/checkpoint ---
            if state.step_in_stage == plan.steps:
                break
            if point_crossed(tokens_before, state.tokens, job.curriculum.validation_every_tokens):
                run.validate_at_point(state)
            if run.checkpoint_due(state):
                run.report(state, checkpoint=True)
        run.log(state, lr, plan)
        state.stage += 1
        state.step_in_stage = 0
        run.stage_boundary(state, validate=run.validates_at_stage_end(tokens_before, state, len(plans)))


BOUNDARY_SCORE = 10**18
"""Added to a stage-boundary checkpoint's keep_score, so it ranks above every mid-stage one."""

CHECKPOINT_WRITE_WAIT_S = 600
"""How long a checkpoint waits for the one before it to be written (see Run.report)."""


class Run:
    """One worker's model, optimizer, clocks and logs."""

    def __init__(self, job: JobSpec, rank: int, world: int, coord, run_dir: str, started_at: float | None = None,
                 tracker: tuple[str, Redacted | None] | None = None):
        self.job, self.rank, self.world, self.coord, self.run_dir = job, rank, world, coord, run_dir
        self.artifacts = artifacts_dir(run_dir)
        self.started_at = started_at
        self.device = ray.train.torch.get_device()
        self.raw_model, self.model, self.optimizer, self.fp8_recipe = worker_model(job, world, self.device)
        self.metrics = Metrics(job, rank, world, self.device, coord, self.artifacts, tracker)
        self.digests = StepDigests.from_environment(rank)
        self.last_checkpoint: str | None = None
        """Rank 0's latest checkpoint in storage, once written."""
        self.clock = TrainClock()
        """Training wall time (rank 0's is recorded): switches counted, validation not."""
        self.last_ckpt_tokens = 0
        self.last_ckpt_time = time.monotonic()
        self.seconds_since_checkpoint = 0.0
        """Rank 0's seconds since the last checkpoint, as the last log interval shared them."""
        self.checkpoint_written = threading.Event()
        """Set when rank 0's latest checkpoint is written and copied (set while none is pending)."""
        self.checkpoint_written.set()
        self.staging = HostStaging()
        """Rank 0's host buffers for checkpoint snapshots (on a GPU made before the first step,
        else at the first checkpoint)."""
        self.incarnation: str | None = None
        """The coordinator's, from `restore` on (see coordinator.py's docstring)."""
        self._val_rows: dict[str, np.ndarray] | None = None
        # Asked for now, used at the first stage boundary: the coordinator reads and packs the
        # held-out documents while stage 1 trains.
        cur = job.curriculum
        self._val_rows_ref = coord.validation_rows.remote(cur.validation_seq_len, cur.validation_rows) \
            if cur.validation_rows else None
        if rank == 0:
            print(f"rank 0 of {world}: {self.device}, {torch.get_num_threads()} torch thread(s)", flush=True)
            if self.raw_model.kernel_note:
                print(f"note: {self.raw_model.kernel_note}", flush=True)
            stale = remove_stale_staging_dirs()
            if stale:
                print(f"removed {len(stale)} checkpoint staging director{'y' if len(stale) == 1 else 'ies'} that "
                      f"stopped runs left on this node ({os.path.dirname(stale[0])}/{STAGING_PREFIX}*)", flush=True)

    # ---- restore / report ----------------------------------------------------------------------

    def restore(self, checkpoint, resume_from: str | None) -> TrainState:
        """The state to start from (Ray Train's checkpoint after a failure, else `--resume`'s,
        else a fresh one), after joining the coordinator with its curriculum state."""
        shown = None
        if checkpoint is not None:
            # as_directory, not to_directory(): every rank of a node would copy into one default
            # path at once, and read files another rank is still rewriting.
            with checkpoint.as_directory() as path:
                state = self._load(path)
            shown = path
        elif resume_from:  # a directory, or a URI (downloaded once per node)
            with ray.train.Checkpoint(resume_from).as_directory() as path:
                state = self._load(path)
            shown = resume_from
        else:
            state = TrainState(tokens_by_source=dict.fromkeys(self.job.sources, 0))
        self.clock = TrainClock(already=state.train_seconds)
        # Before any stage's data is asked for: a restarted coordinator knows no cursors but this
        # checkpoint's. It may refuse them, so the resume is announced only after.
        self.incarnation = ray.get(self.coord.join.remote(state.coordinator))
        if shown and self.rank == 0 and state.workers and state.workers != self.world:
            print(f"resized: {state.workers} -> {self.world} workers at {time.strftime('%H:%M:%S')}; the same steps, "
                  f"split among {self.world}, from step {state.step + 1} (stage {state.stage + 1}, "
                  f"{state.step_in_stage} into it)", flush=True)
        if shown and self.rank == 0:
            print(f"Resumed from {shown}: stage {state.stage + 1}, step {state.step} "
                  f"({state.step_in_stage} into the stage), {state.tokens:,} tokens; the stage's data is "
                  f"rebuilt from its start cursors and the {state.step_in_stage} finished steps' rows are "
                  "re-made and skipped, so nothing is repeated or lost", flush=True)
        return state

    def _load(self, path: str) -> TrainState:
        state, _ = load_state(path)
        model_state, optim_state = load_tensors(path, self.device)
        self.raw_model.load_portable_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        # Rank 0's generators, on every rank: they were seeded alike and have drawn alike.
        restore_rng(path)
        state.resumes += 1
        self.last_ckpt_tokens, self.last_ckpt_time = state.tokens, time.monotonic()
        return state

    def checkpoint_due(self, state: TrainState) -> bool:
        """A mid-stage checkpoint is due: run.checkpoint_every_tokens trained since the last, or
        run.checkpoint_every_s of rank 0's clock as the last log interval shared it (every rank
        decides alike: a checkpoint is a report every rank makes)."""
        return checkpoint_due(state.tokens - self.last_ckpt_tokens, self.seconds_since_checkpoint,
                              self.job.run.checkpoint_every_tokens, self.job.run.checkpoint_every_s)

    def report(self, state: TrainState, checkpoint: bool, boundary: bool = False) -> None:
        """Every rank reports (Ray Train requires it); rank 0 attaches the checkpoint. The
        metrics: the log interval's loss, LR and tokens/s, the stage, the latest validation, and
        `keep_score`, by which Ray Train keeps every stage-boundary checkpoint and the latest
        mid-stage ones (launch.checkpoint_config)."""
        metrics = {"step": state.step, "tokens": state.tokens, "stage": min(state.stage + 1, len(
            self.job.curriculum.stages)), "step_in_stage": state.step_in_stage, **self.metrics.latest,
            "keep_score": state.tokens + (BOUNDARY_SCORE if boundary else 0)}
        if state.validation and state.validation[-1]["tokens"] == state.tokens:
            metrics.update({f"val_{s}": v for s, v in state.validation[-1]["loss"].items()})
        if checkpoint:  # on every rank, so all ranks agree when the next one is due
            state.workers = self.world
            self.last_ckpt_tokens = state.tokens
            self.last_ckpt_time, self.seconds_since_checkpoint = time.monotonic(), 0.0
            state.train_seconds = self.clock.seconds()
        if self.rank != 0 or not checkpoint:
            ray.train.report(metrics)
            return
        state.coordinator = ray.get(self.coord.state.remote(state.stage, self.incarnation))
        # One snapshot in host memory at a time: a checkpoint due before the last one is written
        # waits for it here rather than holding a second copy of the weights and AdamW state.
        if not self.checkpoint_written.wait(timeout=CHECKPOINT_WRITE_WAIT_S):
            # Ray Train skips a report whose barrier was reset by a failing worker, and then never
            # calls the write below: a bounded wait keeps that from stopping this rank for good.
            # New buffers: a write that is only slow still reads the kept ones.
            print(f"warning: the previous checkpoint was not written within {CHECKPOINT_WRITE_WAIT_S} s; "
                  "taking the next one anyway, into new host buffers", flush=True)
            self.staging = HostStaging()
        written = self.checkpoint_written = threading.Event()  # this checkpoint's own
        snapshot = CheckpointSnapshot.take(self.raw_model.portable_state_dict(), self.optimizer.state_dict(),
                                           state, self.job.to_dict(), self.staging)
        storage = ray.train.get_context().get_storage()

        def write_then_upload(checkpoint, dir_name: str):
            # On Ray Train's upload thread, one checkpoint at a time in report order: written
            # into the local directory, then copied to storage (Ray deletes the directory after).
            # Training goes on meanwhile; the run's end waits for it.
            nonlocal snapshot
            try:
                if snapshot is not None:
                    snapshot.write(checkpoint.path)
                    snapshot = None  # written: its buffers are free for the next snapshot
                persisted = storage.persist_current_checkpoint(checkpoint, dir_name)
                self.last_checkpoint = storage_join(self.run_dir, dir_name)
                return persisted
            except Exception as e:  # noqa: BLE001 - a disk that is full, storage that refuses writes
                # Ray Train fails this worker for it; the group it restarts is refused at once.
                message = (f"checkpoint {dir_name} could not be written to {self.run_dir} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix: free or "
                           "restore the storage, then resume from the latest whole checkpoint")
                ray.get(self.coord.end_run.remote(message))
                raise CannotContinue(message) from e
            finally:
                written.set()

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging_dir()),
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         checkpoint_upload_fn=write_then_upload)
        self.publish_artifacts()

    def reserve_checkpoint_buffers(self) -> None:
        """Rank 0 on a GPU starts making its pinned snapshot buffers before the first step, while
        the worker waits for its first batch, so the first checkpoint copies into ready memory.
        Not on a CPU worker: making them ahead there only moves the work into training's own
        cores."""
        if self.rank == 0 and self.device.type == "cuda":
            CheckpointSnapshot.reserve(self.raw_model.portable_state_dict(), adamw_state_like(self.optimizer),
                                       self.staging)

    def publish_artifacts(self) -> None:
        """Rank 0's TensorBoard log and loss plot, copied to the run's storage URI (a directory
        run holds them in place)."""
        if self.artifacts != self.run_dir:
            self.metrics.flush()
            try:
                upload(self.artifacts, self.run_dir)
            except (StorageError, OSError) as e:  # the logs stay on this node; training goes on
                print(f"warning: TensorBoard and the loss plot were not copied to {self.run_dir} ({e}); they are in "
                      f"{self.artifacts} on rank 0's node", flush=True)

    # ---- the step --------------------------------------------------------------------------------

    def train_step(self, rows: np.ndarray, global_valid: int, lr: float, stage) -> torch.Tensor:
        """One optimizer step on this rank's rows; returns the summed loss of its valid targets as
        a device tensor. Nothing here waits for the GPU: the loss is read at the log interval
        (`log`), so the host queues the next step while this one runs. Rows go through pinned
        memory for the same reason: a copy from pageable memory waits for the stream."""
        tokens = torch.from_numpy(rows.astype(np.int64))
        if self.device.type == "cuda":
            tokens = tokens.pin_memory()
        tokens = tokens.to(self.device, non_blocking=True)
        settings = StepSettings(rank=self.rank, world=self.world, micro_batch=stage.micro_batch_size,
                                grad_clip=self.job.optimizer.grad_clip, amp=self.device.type == "cuda",
                                fp8_recipe=self.fp8_recipe if stage.fp8 else None, dynamic_seq=self.job.model.compile)
        return train_step(Trainee(self.model, self.raw_model, self.optimizer), tokens, settings, lr=lr,
                          global_valid=global_valid)

    # ---- accounting and logs -----------------------------------------------------------------

    def account(self, state: TrainState, counts: dict[str, int], global_valid: int, seq_len: int,
                loss_sum: torch.Tensor) -> None:
        state.step += 1
        state.tokens += global_valid
        by_source = step_tokens_by_source(counts, global_valid, seq_len)
        for s, n in by_source.items():
            state.tokens_by_source[s] = state.tokens_by_source.get(s, 0) + n
        while len(state.stage_tokens_by_source) <= state.stage:
            state.stage_tokens_by_source.append({})
        stage_mix = state.stage_tokens_by_source[state.stage]
        for s, n in by_source.items():
            stage_mix[s] = stage_mix.get(s, 0) + n
        self.metrics.add_step(loss_sum, global_valid)

    def log(self, state: TrainState, lr: float, plan) -> None:
        """Close the log interval (every rank: the loss all-reduce, which also shares rank 0's
        seconds since the last checkpoint); rank 0 prints it."""
        agreed = self.metrics.log(state, lr, plan, self.sum_over_ranks, time.monotonic() - self.last_ckpt_time)
        if agreed is not None:
            self.seconds_since_checkpoint = agreed

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """t summed element-wise over all ranks (every rank must call it), back on the CPU."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu()

    boundary_times: tuple[float, float, float] | None = None
    """When the last stage's last step ended, its validation ended, its checkpoint was reported."""

    stage_clock: tuple[float, int, int] = (0.0, 0, 0)
    """When the stage's data was in hand (after its banner), and the step and tokens then."""

    def validates_at_stage_end(self, tokens_before: int, state: TrainState, stages: int) -> bool:
        """Every stage end validates, unless the run validates at token points: then the stage's
        last step does where it reaches a point, as any step does, and the run's last step."""
        every = self.job.curriculum.validation_every_tokens
        return not every or state.stage == stages or point_crossed(tokens_before, state.tokens, every)

    def stage_boundary(self, state: TrainState, validate: bool = True) -> None:
        """Validation and the boundary checkpoint, timed for the next switch's log line."""
        ended = time.perf_counter()
        started, step0, tokens0 = self.stage_clock
        self.end_of_stage(state, steps=state.step - step0, tokens=state.tokens - tokens0, seconds=ended - started,
                          validate=validate)
        validated = time.perf_counter()
        self.report(state, checkpoint=True, boundary=True)
        self.boundary_times = (ended, validated, time.perf_counter())

    def note_first_batch(self, state: TrainState) -> None:
        """The stage switch's cost: from the previous stage's last step to this stage's first
        batch in hand, split into the boundary's own work (validation, checkpoint) and the wait
        for the new stage's data (what a cold per-stage pipeline would cost). The progress line's
        interval starts here too, so its Tokens/sec is training's own rate: the start and each
        switch have lines of their own."""
        first_of_run, boundary = self.started_at is not None, self.boundary_times
        if first_of_run and self.rank == 0:
            print(f"first batch in hand {time.time() - self.started_at:.1f} s after the job started", flush=True)
        if first_of_run and state.tokens == 0 and self.job.curriculum.validation_every_tokens:
            self.validate_at_start(state)
        self.clock.start()
        self.started_at = self.boundary_times = None
        if not (first_of_run or boundary):
            return
        now = time.perf_counter()
        self.metrics.start_interval_if_empty(now)
        if boundary is not None and self.rank == 0:
            ended, validated, done = boundary
            print(f"  stage switch: first batch of stage {state.stage + 1} {now - ended:.2f} s after the last step "
                  f"of the previous stage ({validated - ended:.2f} s validation, {done - validated:.2f} s "
                  f"checkpoint, {now - done:.2f} s waiting for data)", flush=True)

    def stage_banner(self, state: TrainState, plan) -> None:
        self.stage_clock = (time.perf_counter(), state.step, state.tokens)
        self.metrics.stage_banner(state, plan, fp8=self.fp8_recipe is not None)

    def end_of_stage(self, state: TrainState, steps: int, tokens: int, seconds: float, validate: bool = True) -> None:
        """Held-out validation per domain at a fixed seq_len (every rank evaluates its share),
        and the stage's summary lines."""
        losses = self.record_validation(state, stage_no=state.stage) if validate else {}
        self.metrics.stage_summary(state, steps, tokens, seconds, losses)

    def validate_at_start(self, state: TrainState) -> None:
        """Before the first step: the initial weights' digest (rank 0) and held-out losses."""
        if self.rank == 0:
            state.initial_weights = weights_digest(self.raw_model.portable_state_dict())
        self.validate_at_point(state)

    def validate_at_point(self, state: TrainState) -> None:
        """Validation at a token point inside a stage (curriculum.validation_every_tokens)."""
        self.metrics.validation_point(state, self.record_validation(state, stage_no=state.stage + 1))

    def record_validation(self, state: TrainState, stage_no: int) -> dict[str, float]:
        """Held-out losses now, appended to state.validation with the training seconds so far
        (the validation itself not counted); every rank must call it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the queued steps are training time
        state.train_seconds = self.clock.seconds()
        with self.clock.paused():
            losses = self.validate()
        if losses:
            state.validation.append({"stage": stage_no, "step": state.step, "tokens": state.tokens,
                                     "seconds": round(state.train_seconds, 3), "loss": losses})
            self.metrics.validation_scalars(losses, state.tokens)
        return losses

    def validate(self) -> dict[str, float]:
        """Mean held-out loss per source, the ranks sharing the rows (worker.held_out_losses)."""
        if self._val_rows is None:
            self._val_rows = ray.get(self._val_rows_ref) if self._val_rows_ref is not None else {}
        rows = {s: self._val_rows[s] for s in self.job.sources if s in self._val_rows}  # the same order on every rank
        return held_out_losses(self.raw_model, rows, self.rank, self.world, self.device, self.sum_over_ranks)

    def finish(self, state: TrainState) -> None:
        if self.rank != 0:
            return
        from yxanul_ray.report import final_summary, plot_loss

        stats = ray.get(self.coord.total_stats.remote(self.incarnation))
        print(final_summary(self.job, state, stats), flush=True)
        plot = os.path.join(self.artifacts, "loss.png")
        plot_loss(self.job, state, plot)
        self.publish_artifacts()
        self.checkpoint_written.wait(timeout=CHECKPOINT_WRITE_WAIT_S)  # the final one, for the tracker
        self.metrics.close(plot, self.last_checkpoint)
        print(f"loss curve: {storage_join(self.run_dir, 'loss.png')}; TensorBoard: "
              f"{storage_join(self.run_dir, 'tensorboard')}", flush=True)


def checkpoint_due(tokens_since: int, seconds_since: float, every_tokens: int, every_s: float) -> bool:
    """Whether a mid-stage checkpoint is due (pure): either setting met; 0 turns a setting off."""
    return bool(every_tokens and tokens_since >= every_tokens) or bool(every_s and seconds_since >= every_s)
