"""A run on Ray: connect to Ray (or start a local cluster), create the coordinator, build and
fit the TorchTrainer, and turn its end into an exit code and a line saying where to go on.

Works the same under `ray job submit` (it joins the job's cluster), after `ray start --head`
(it finds the running cluster) and with no cluster at all (it starts a local one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING

from yxanul_ray.checkpoint import latest_checkpoint
from yxanul_ray.preflight import cpu_shortfall, hub_token, preflight
from yxanul_ray.specs import ConfigError, JobSpec
from yxanul_ray.stopping import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    reclaim_sigterm,
    resume_hint,
    sigterm_interrupts,
    stop_signal,
)
from yxanul_ray.storage import is_uri, storage_join

if TYPE_CHECKING:
    from yxanul_ray.manifest import SourceListing


HEALTH_CHECK_INTERVAL_S = 0.5
"""How often Ray Train's controller polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, which
a user's environment overrides)."""


def start_ray():
    """Connect to Ray (or start a local cluster) as every run of this job does; returns `ray`."""
    from yxanul_ray.raycluster import init_ray, quiet_ray_data

    cores = os.cpu_count() or 1
    # A cluster of our own gets twice the cores as logical CPUs: train workers and Ray Data's
    # tasks hold fractions of a CPU, and on small machines whole CPUs would starve the pipeline.
    ray = init_ray(num_cpus=max(4, 2 * cores))
    quiet_ray_data()
    return ray


def make_trainer(job: JobSpec, train_loop, run_name: str, loop_config: dict, num_to_keep: int | None = None):
    """The job's TorchTrainer: its workers, failure budget, checkpoints (checkpoint_config;
    `num_to_keep` replaces the config's count) and storage."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray Train's controller polls its workers every 2 s by default, so it learns that the run
    # has ended (or a worker failed) up to 2 s late; a poll is one small RPC per worker.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=job.run.workers, use_gpu=job.run.use_gpu,
                                     resources_per_worker={"CPU": job.run.cpus_per_worker},
                                     **({"elastic_resize_monitor_interval_s": job.run.resize_check_s}
                                        if job.run.elastic else {})),
        run_config=RunConfig(name=run_name, storage_path=job.run.storage_path,
                             failure_config=FailureConfig(max_failures=job.run.max_failures),
                             checkpoint_config=checkpoint_config(job, num_to_keep),
                             # Ray Train's print patch would log every progress line twice.
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
        torch_config=TorchConfig(backend="nccl" if job.run.use_gpu else "gloo"),
    )


def check_local_resources(ray, job: JobSpec) -> None:
    """GPU workers on a cluster started here need this machine's GPUs, and the train workers and
    one data task at a time its logical CPUs: Ray Train would otherwise wait for nodes that no
    autoscaler will add, retrying its worker group every 60 s (on this CPU machine, 93 s without
    a line of progress before it was stopped), and Ray Data for CPUs to run a task on. A joined
    cluster may add them (cluster.yaml's autoscaler), so it is left to wait."""
    from yxanul_ray.raycluster import started_here

    if not started_here():
        return
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if job.run.use_gpu and gpus < job.run.min_workers:
        fix = f"--set run.workers={gpus}" if gpus else "--set run.use_gpu=false (CPU workers)"
        raise ConfigError(f"{job.path}: run.use_gpu: {job.run.min_workers} GPU worker(s), but no Ray cluster was "
                          f"running and the one started here, this machine alone, has {gpus} GPU(s); fix: {fix}, or "
                          "start or join a cluster with GPU nodes (`ray start`, `ray job submit`)")
    cpus = resources.get("CPU", 0)
    shortfall = cpu_shortfall(job, cpus)
    if shortfall:
        problem, fix = shortfall
        raise ConfigError(f"{job.path}: {problem}, but no Ray cluster was running and the one started here has "
                          f"{cpus:g} logical CPUs; fix: {fix}")


def warn_of_node_local_paths(ray, job: JobSpec) -> None:
    """On a cluster of several nodes, every node must reach the run's storage (the train workers
    write checkpoints there) and its local sources (Ray Data's read tasks run on any node): a
    directory works only as a shared mount, and Ray Train stops the run at its start, or a read
    task fails, otherwise. Said here first, with the fix: when the cluster has several nodes, or
    when the train workers need GPUs this node lacks (an autoscaler starts their nodes later)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    gpus_here = sum(n.get("Resources", {}).get("GPU", 0) for n in alive if n.get("NodeID") == here)
    if len(alive) > 1:
        why = f"the cluster has {len(alive)} nodes"
    elif job.run.use_gpu and not gpus_here:  # GPU nodes an autoscaler has yet to start
        why = "the train workers need GPUs and this node has none, so they run on other nodes"
    else:
        return
    fix = "every node must reach it (a shared mount such as NFS)"
    if not is_uri(job.run.storage_path):
        print(f"warning: run.storage_path {job.run.storage_path} is a directory and {why}: {fix}, or Ray Train stops "
              "the run at its start. Set run.storage_path to a bucket (s3://bucket/prefix, gs://...) or a shared "
              "mount.", flush=True)
    for name, src in job.sources.items():
        if (src.path is not None and not is_uri(src.path)) or src.hf_mirror is not None:
            where, value = ("path", src.path) if src.path is not None else ("hf_mirror", src.hf_mirror)
            print(f"warning: sources.{name}.{where} {value} is a local path and {why}: {fix}, or the read tasks "
                  "scheduled on other nodes fail. Use a shared mount, or a Hub source (`hf`).", flush=True)


def run_training(job: JobSpec, resume: str | None = None, train_loop=None, new_run: bool = False) -> int:
    """Run the job; `train_loop` replaces the workers' loop (a diagnostic's hook). The run's
    name is stable (run_name), so a resubmission of the same job continues the run in storage
    from its latest checkpoint, as Ray Train restores it; `new_run` starts another."""
    started_at = time.time()
    job, listing, resume = preflight(job, resume)
    cur = job.curriculum
    run_name = run_name_of(job, resume, time.strftime("%Y%m%d-%H%M%S") if new_run else None)
    run_dir = storage_join(job.run.storage_path, run_name)
    if not new_run and latest_checkpoint(run_dir):
        print(f"run {run_name} has checkpoints in {run_dir}: it goes on from its latest (--new-run starts over)",
              flush=True)
    where_to_go_on = functools.partial(resume_hint, run_dir, len(cur.stages), cur.target_tokens, resume)
    # From Ray's start on, a stop says where to go on from, also before training begins.
    try:
        with sigterm_interrupts() as received:
            result = start_and_fit(job, listing, resume, run_name, run_dir, started_at, train_loop)
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C ends fit() in SystemExit (stopping.py), SIGTERM here
        how = stop_signal(received, stop)
        print(f"run stopped ({how}); {where_to_go_on()}", flush=True)
        return EXIT_TERMINATED if how == "SIGTERM" else EXIT_INTERRUPTED
    except Exception as e:
        # Ray Train's, imported once Ray is up (never before: see raycluster.local_ray_env).
        train_module = sys.modules.get("ray.train")
        if train_module is None or not isinstance(e, train_module.TrainingFailedError):
            raise
        # run.max_failures restarts spent, or a controller error
        print(failure_summary(e), flush=True)
        print(f"training failed; {where_to_go_on()}", flush=True)
        return 1
    if result.return_value:  # the workers' loop returns only why it was refused (train_loop_per_worker)
        print(f"training refused: {result.return_value}; {where_to_go_on()}", flush=True)
        return 1
    print(f"run finished: checkpoints under {run_dir}", flush=True)
    if result.checkpoint is not None:
        print(f"final checkpoint: {storage_join(run_dir, os.path.basename(result.checkpoint.path))}", flush=True)
    return 0


def run_name_of(job: JobSpec, resume: str | None = None, suffix: str | None = None) -> str:
    """run.name and a digest of the job's settings (and of the checkpoint resumed from): the
    same job submitted again gets the same name, so Ray Train finds the run's checkpoints in
    storage. `suffix` (--new-run: the time) makes a new one."""
    settings = {**job.to_dict(), "path": None, "resume": resume}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{job.run.name}-{digest}" + (f"-{suffix}" if suffix else "")


def failure_summary(error: Exception) -> str:
    """Each failed rank's error in a line (its last), not Ray's tracebacks, which stay in the
    session's log files: what the run's console ends with, before where to go on from."""
    failures = getattr(error, "worker_failures", None) or {"controller": getattr(error, "controller_failure", error)}
    lines = []
    for who, failure in failures.items():
        text = [line.strip() for line in str(failure).splitlines() if line.strip()]
        last = text[-1] if text else type(failure).__name__
        if isinstance(failure, OSError) or last.startswith("OSError"):  # Ray Train's own writes to storage
            last = (f"the run's storage refused a write ({last}); fix: free or restore the storage, then resume "
                    "from the latest whole checkpoint")
        line = f"  rank {who}: {last}" if isinstance(who, int) else f"  {who}: {last}"
        if line not in lines:
            lines.append(line)
    return "\n".join(["the run's last error, by rank (Ray's logs hold the tracebacks):", *lines])


def checkpoint_config(job: JobSpec, num_to_keep: int | None = None):
    """Which checkpoints Ray Train keeps: every stage-boundary one and the latest
    run.keep_checkpoints mid-stage ones (the reports' keep_score ranks boundaries above all
    others, and Ray Train always keeps the latest), or `num_to_keep` best by that score."""
    from ray.train import CheckpointConfig

    keep = job.run.keep_checkpoints
    if num_to_keep is None and keep is not None:
        num_to_keep = len(job.curriculum.stages) + keep
    if num_to_keep is None:
        return CheckpointConfig()
    return CheckpointConfig(num_to_keep=num_to_keep, checkpoint_score_attribute="keep_score",
                            checkpoint_score_order="max")


def start_and_fit(job: JobSpec, listing: SourceListing, resume: str | None, run_name: str, run_dir: str,
                  started_at: float, train_loop=None, num_to_keep: int | None = None):
    """Ray's start (or the cluster this process joined), the coordinator and the trainer, and the
    run: Ray Train's result. The coordinator (and its packing actor) ends with the run."""
    ray = start_ray()
    reclaim_sigterm()  # ray.init put its own SIGTERM handler in place of run_training's
    check_local_resources(ray, job)
    from yxanul_ray.coordinator import CurriculumCoordinator
    from yxanul_ray.raycluster import head_node_strategy
    from yxanul_ray.tracker import tracker_environment
    from yxanul_ray.train_loop import train_loop_per_worker

    warn_of_node_local_paths(ray, job)
    # Restartable as the workers are: a crash of its process costs a restart from the last
    # checkpoint, as a worker's does, instead of the run (see coordinator.py).
    coordinator = CurriculumCoordinator.options(name=f"yxanul-coordinator-{run_name}-{uuid.uuid4().hex[:6]}",
                                                max_restarts=job.run.max_failures,
                                                scheduling_strategy=head_node_strategy(ray)).remote(
        job.to_dict(), job.run.max_workers, listing, hub_token(job), run_name)
    if resume is None:
        from yxanul_ray.stage_data import STAGES_AHEAD

        # The first stages' data starts now, alongside Ray Train's start (coordinator.prepare):
        # as many stages as the workers ask for when their loop begins.
        coordinator.prepare.remote(1 + STAGES_AHEAD)
    cur = job.curriculum
    if cur.validation_rows:
        # Packed now, while the trainer starts its workers, so the first stage boundary (a few
        # steps in, on the demo) finds the held-out rows ready; the coordinator keeps one copy.
        coordinator.validation_rows.remote(cur.validation_seq_len, cur.validation_rows)
    trainer = make_trainer(job, train_loop or train_loop_per_worker, run_name, {
        "job": job.to_dict(), "coordinator": coordinator, "run_dir": run_dir, "run_name": run_name,
        "resume_from": resume, "started_at": started_at, "tracker_env": tracker_environment(job.run.tracker)},
        num_to_keep)
    workers = (f"{job.run.min_workers}-{job.run.max_workers} worker(s), elastic" if job.run.elastic
               else f"{job.run.workers} worker(s)")
    print(f"run {run_name}: {workers}, storage {run_dir}", flush=True)
    result = trainer.fit()
    ray.kill(coordinator, no_restart=True)  # a driver that runs more (compare's arms) holds no idle actors
    return result
