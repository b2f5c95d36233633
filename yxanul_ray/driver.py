"""The job's driver: validates, connects to Ray, creates the coordinator and runs the TorchTrainer.

Works the same under `ray job submit` (it joins the job's cluster), after `ray start --head`
(it finds the running cluster) and with no cluster at all (it starts a local one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from yxanul_ray.config import ConfigError, JobSpec, hub_endpoint_problem, job_from_dict, read_yaml
from yxanul_ray.stopping import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    reclaim_sigterm,
    resume_hint,
    sigterm_interrupts,
    stop_signal,
)
from yxanul_ray.storage import StorageError, is_uri, open_storage, resolve_storage, storage_join

if TYPE_CHECKING:
    from yxanul_ray.manifest import SourceListing


def prepare_demo_corpus(config_path: str, overrides: list[str]) -> None:
    """Build the offline demo corpus where a config's `data.demo_corpus` says, if it is missing,
    so the demo runs on a fresh clone (and inside `ray job submit`'s uploaded working dir)."""
    from yxanul_ray.config import apply_override

    raw = read_yaml(config_path)
    for item in overrides:
        apply_override(raw, item, config_path)
    target = (raw.get("data") or {}).get("demo_corpus")
    if not target:
        return
    marker = os.path.join(target, "code")
    if not os.path.isdir(marker) or not os.listdir(marker):
        from yxanul_ray.demo_corpus import build_demo_corpus

        counts = build_demo_corpus(target)
        print(f"built the offline demo corpus in {target}: " + ", ".join(
            f"{k} {d:,} docs" for k, (d, _) in counts.items()), flush=True)


def benchmark_job(description: str, forced: tuple[str, ...] = (), argv: list[str] | None = None,
                  parents: tuple = ()) -> tuple[JobSpec, str, list[str]]:
    """A benchmark script's `--config`, `--set KEY=VALUE` and `--target-tokens N` (as jobs/train.py
    takes them), from `argv` (default: the command line): the job with `forced` overrides last,
    the demo corpus built where the config names one, and the config path and the user's
    overrides, the scaled budgets included (to run jobs/train.py on the same). `parents`: the
    script's own argument parsers (add_help=False), so --help lists their options too."""
    import argparse

    from yxanul_ray.config import load_job, scaled_budget_overrides

    ap = argparse.ArgumentParser(description=description, parents=list(parents))
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--target-tokens", type=int, help="stage budgets scaled to this total, as jobs/train.py does")
    args = ap.parse_args(argv)
    prepare_demo_corpus(args.config, args.overrides)
    overrides = list(args.overrides)
    if args.target_tokens:
        overrides += scaled_budget_overrides(load_job(args.config, overrides), args.target_tokens)
    return load_job(args.config, overrides + list(forced)), args.config, overrides


def absolute_paths(job: JobSpec) -> JobSpec:
    """Local source paths relative to the driver's working directory, made absolute for the
    workers (whose working directory differs)."""
    from yxanul_ray.tokenizer import local_tokenizer_file

    sources = {
        name: dataclasses.replace(src, path=resolve_storage(src.path) if src.path else None,
                                  hf_mirror=os.path.abspath(os.path.expanduser(src.hf_mirror)) if src.hf_mirror
                                  else None)
        for name, src in job.sources.items()
    }
    run = dataclasses.replace(job.run, storage_path=resolve_storage(job.run.storage_path))
    tokenizer = job.data.tokenizer
    # A tokenizer.json or its directory here, not a Hub id; `gpt2` is the name even beside a gpt2/ directory.
    if tokenizer != "gpt2" and os.path.exists(os.path.expanduser(tokenizer)):
        # The file itself, so job.json names what the run read; a directory without one: check_tokenizer says so.
        with contextlib.suppress(FileNotFoundError):
            tokenizer = os.path.abspath(local_tokenizer_file(tokenizer))
    return dataclasses.replace(job, sources=sources, run=run, data=dataclasses.replace(job.data, tokenizer=tokenizer))


def check_tokenizer(job: JobSpec):
    """Load the job's tokenizer here, before any cluster work, and return it. One that does not
    load would fail the coordinator (and every retry of the worker group); one with more ids than
    the model has embedding rows would fail the first step that meets such an id (on a GPU, a
    device-side assert that ends the process), possibly hours in. Both are ConfigErrors now."""
    from yxanul_ray.tokenizer import load_tokenizer, run_tokenizer

    spec = job.data.tokenizer
    try:
        tokenizer = load_tokenizer(run_tokenizer(spec, job.data.hf_endpoint)[0])
    except FileNotFoundError as e:  # no tokenizer.json there (local_tokenizer_file)
        raise ConfigError(f"{job.path}: data.tokenizer: {spec!r}: {e.strerror} (relative paths are read from "
                          f"{os.getcwd()}); fix: the path of a tokenizer.json or of the directory that holds one "
                          "(a fast tokenizer's save_pretrained writes it), `gpt2`, or a Hub id") from None
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises many kinds; all mean the same here
        raise ConfigError(f"{job.path}: data.tokenizer: {spec!r} does not load ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); fix: `gpt2` (offline), a tokenizer.json on "
                          "this machine, or a Hub id this machine can reach") from None
    rows = job.model.shape.vocab_size
    if tokenizer.vocab_size > rows:
        fit = -(-tokenizer.vocab_size // 64) * 64
        raise ConfigError(f"{job.path}: model: the model has {rows:,} embedding rows (model.overrides.vocab_size, or "
                          f"preset {job.model.preset!r}), but data.tokenizer {spec!r} has {tokenizer.vocab_size:,} "
                          f"ids; fix: set model.overrides.vocab_size to {fit:,} (the tokenizer's, padded to a "
                          "multiple of 64) or more")
    return tokenizer


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


def make_trainer(job: JobSpec, train_loop, run_name: str, loop_config: dict, keep_checkpoints: int | None = None):
    """The job's TorchTrainer: its workers, failure budget, checkpoints (the latest
    `keep_checkpoints`, None: all) and storage."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray Train's controller polls its workers every 2 s by default, so it learned that the run
    # had ended (and of a failed worker) up to 2 s late: measured on 2 cores, 2.1-3.0 s from
    # rank 0's last line to "run finished", 0.3-0.8 s at 0.5 s. A poll is one small RPC per worker.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=job.run.workers, use_gpu=job.run.use_gpu,
                                     resources_per_worker={"CPU": job.run.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=job.run.storage_path,
                             failure_config=FailureConfig(max_failures=job.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                             # Ray Train's print patch would log every progress line twice.
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
        torch_config=TorchConfig(backend="nccl" if job.run.use_gpu else "gloo"),
    )


def pin_hub_revisions(job: JobSpec) -> JobSpec:
    """`job` with each Hub source (not a mirror) and a Hub tokenizer pinned to a commit: the one
    its revision names, or the Hub's current one. Every listing of the run, a restarted
    coordinator's and a resume's included, then reads the same files and tokenizer, and job.json
    records the commit."""
    from yxanul_ray.hub import HUB_CALLS_AT_ONCE, pin_model_revision, pin_revision
    from yxanul_ray.tokenizer import hub_tokenizer

    job = pin_hub_endpoint(job)
    endpoint = job.data.hf_endpoint
    tokenizer = job.data.tokenizer
    hub = hub_tokenizer(tokenizer)
    with ThreadPoolExecutor(max_workers=HUB_CALLS_AT_ONCE) as pool:
        # Asked at once, a round trip each: the start waits for the slowest answer, not their sum.
        # Answers (and the first error) are taken in the config's order, as when asked in turn.
        tokenizer_sha = (pool.submit(pin_model_revision, hub.repo, hub.revision, f"data.tokenizer {tokenizer!r}",
                                     endpoint) if hub and not _is_commit(hub.revision) else None)
        source_shas = {name: pool.submit(pin_revision, spec, endpoint)  # None for local files and mirrors
                       for name, spec in job.sources.items() if not _is_commit(spec.revision)}
        if tokenizer_sha is not None:
            sha = tokenizer_sha.result()
            print(f"data.tokenizer: hf://{hub.path} at commit {sha} ({hub.revision or 'the default branch'} now; "
                  "pinned for this run and its resumes)", flush=True)
            job = dataclasses.replace(job, data=dataclasses.replace(job.data, tokenizer=hub.at(sha)))
        sources = dict(job.sources)
        for name, answer in source_shas.items():
            spec = job.sources[name]
            if sha := answer.result():
                was = spec.revision or "the default branch"
                print(f"source {name}: hf://datasets/{spec.hf} at commit {sha} ({was} now; pinned for this run and its "
                      "resumes)", flush=True)
                sources[name] = dataclasses.replace(spec, revision=sha)
    return dataclasses.replace(job, sources=sources)


def reads_the_hub(job: JobSpec) -> bool:
    """Whether the job asks a Hub anything: a Hub source that is not a mirror, or a Hub tokenizer."""
    from yxanul_ray.tokenizer import hub_tokenizer

    return any(s.hf and not s.hf_mirror for s in job.sources.values()) or hub_tokenizer(job.data.tokenizer) is not None


def pin_hub_endpoint(job: JobSpec) -> JobSpec:
    """`job` with data.hf_endpoint set where it reads the Hub: as configured, else this process's
    HF_ENDPOINT (huggingface_hub's default, https://huggingface.co, when that is unset). The
    coordinator and the read tasks run in Ray's processes, whose environment is the cluster's,
    not this shell's: they read the endpoint from the job, so every process asks the Hub whose
    commits the run pinned. Raises ConfigError for an endpoint that is not an http(s) URL."""
    from yxanul_ray.hub import DEFAULT_ENDPOINT

    if not reads_the_hub(job):
        return job
    endpoint, origin = job.data.hf_endpoint, "data.hf_endpoint"
    if endpoint is None:
        from huggingface_hub import constants

        endpoint, origin = constants.ENDPOINT, "HF_ENDPOINT"  # unset, huggingface.co: valid, not printed
    endpoint = endpoint.rstrip("/")
    problem = hub_endpoint_problem(endpoint)
    if problem:
        raise ConfigError(f"{job.path}: {origin}: {problem}")
    if endpoint != DEFAULT_ENDPOINT:
        print(f"Hub: {endpoint} (from {origin}; every process of the run reads it)", flush=True)
    return dataclasses.replace(job, data=dataclasses.replace(job.data, hf_endpoint=endpoint))


def hub_token(job: JobSpec):
    """This process's Hub token (HF_TOKEN, or a login's token file: hub.hf_token), redacted, for a
    coordinator that reads the Hub; None otherwise. The coordinator runs with the cluster's
    environment and files, not this shell's and this machine's (see coordinator.py)."""
    from yxanul_ray.hub import hf_token
    from yxanul_ray.sources import Redacted

    token = hf_token()
    return Redacted(token) if token and reads_the_hub(job) else None


def _is_commit(revision: str | None) -> bool:
    return revision is not None and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def check_storage(job: JobSpec) -> None:
    """The run's storage, before any cluster work: a URI pyarrow can open, or a directory this
    user can create and write. Ray Train's controller would otherwise fail creating it, a
    traceback after the cluster, the coordinator and the first stages' data had started."""
    path = job.run.storage_path
    fix = "fix: a directory this user can create and write, or a bucket (s3://bucket/prefix, gs://...)"
    if is_uri(path):
        try:
            open_storage(path)
        except StorageError as e:
            raise ConfigError(f"{job.path}: run.storage_path: {e}") from None
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{job.path}: run.storage_path: {path} cannot be created ({e.strerror or e}); "
                          f"{fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{job.path}: run.storage_path: {path} is not writable by this user; {fix}")


def checkpoint_path(path: str, given_as: str = "--resume") -> str:
    """`path` as given, if it is a whole checkpoint (checked_checkpoint); else a ConfigError,
    before any cluster work."""
    checked_checkpoint(path, given_as)
    return path


def checked_checkpoint(path: str, given_as: str = "--resume"):
    """(TrainState, the saved job's dict) of the checkpoint at `path`, once every file a resume or
    an export reads is there and reads (checkpoint.load_state, check_tensor_files); else a
    ConfigError that names the file and the fix (`given_as`: how the user gave the path). The
    train workers would otherwise fail loading it, once per run.max_failures."""
    from yxanul_ray.checkpoint import DamagedCheckpoint, NotACheckpoint, check_tensor_files, load_state

    try:
        state, saved_raw = load_state(path)
        check_tensor_files(path)
    except NotACheckpoint as e:
        if e.missing == "state.json":  # a run's directory, say: the fix names its latest checkpoint
            raise not_a_checkpoint(path, e.missing, given_as) from None
        why = "is not there (a copy made in part, or a run stopped while Ray Train copied it into storage)"
        raise damaged_checkpoint(DamagedCheckpoint(path, e.missing, why), given_as) from None
    except DamagedCheckpoint as e:
        raise damaged_checkpoint(e, given_as) from None
    return state, saved_raw


def damaged_checkpoint(damage, given_as: str = "--resume") -> ConfigError:
    """The error for a checkpoint with a file that is not there or does not read
    (checkpoint.DamagedCheckpoint): the fix names the run's latest other checkpoint that is
    whole, where there is one."""
    from yxanul_ray.checkpoint import checkpoints_in, latest_checkpoint
    from yxanul_ray.storage import storage_split

    run_dir, name = storage_split(damage.path)
    others = latest_checkpoint(run_dir, [other for other in checkpoints_in(run_dir) if other != name])
    fix = (f"pass the run's latest whole checkpoint: {given_as} {others}, or copy this one again" if others else
           "pass another checkpoint of the run, or copy this one again from where it was written")
    return ConfigError(f"{given_as} {damage.path}: {damage.name} {damage.why}; fix: {fix}")


def not_a_checkpoint(path: str, missing: str, given_as: str = "--resume") -> ConfigError:
    """The error for a checkpoint path (`given_as`: how the user gave it) that lacks `missing`. A
    run's directory given instead names its latest whole checkpoint in the fix."""
    from yxanul_ray.checkpoint import checkpoints_in, latest_checkpoint

    fix = "pass a checkpoint directory (a checkpoint_* directory in the run's storage; the run prints its final one)"
    if not is_uri(path) and not os.path.isdir(path):
        return ConfigError(f"{given_as} {path}: {'not a' if os.path.exists(path) else 'no such'} directory; fix: "
                           f"{fix}")
    inside = checkpoints_in(path)
    latest = latest_checkpoint(path, inside)
    if latest:
        fix = f"pass one of the {len(inside)} checkpoints in it, the latest: {given_as} {latest}"
    return ConfigError(f"{given_as} {path}: not a yxanul-ray checkpoint (it holds no {missing}); fix: {fix}")


def checked_at_pinned_commits(job: JobSpec, size_holdouts: bool = True) -> tuple[JobSpec, SourceListing]:
    """`job` with its Hub sources and tokenizer pinned to commits, its tokenizer checked, its
    sources listed there and their held-out sets sized to fill the validation rows: what a run
    (a resume too, which keeps its run's held-out sets: `size_holdouts` False) does before any
    cluster work."""
    from yxanul_ray.holdout import sized_holdouts
    from yxanul_ray.manifest import list_sources

    job = pin_hub_revisions(job)
    tokenizer = check_tokenizer(job)
    listing = list_sources(job)  # a source that does not list is an error here too (manifest.list_sources)
    check_text_fields(job, listing)
    job, notes = sized_holdouts(job, listing.files, tokenizer) if size_holdouts else (job, [])
    for note in notes:
        print(note, flush=True)
    for name in partial_copies(job, listing):
        print(f"note: source {name} reads the Hub's parquet copy of split {job.sources[name].split!r}, which holds "
              "only its first part (a partial-<split> folder); past it the source repeats its documents, in a new "
              "order (a wrap, counted)", flush=True)
    return job, listing


def check_text_fields(job: JobSpec, listing: SourceListing) -> None:
    """Each source's text_field is a field of its first file (sources.text_field_problem), else a
    ConfigError naming the source, the file and its fields. The read tasks would otherwise raise it
    after the cluster and the first stages had started (38 s and 1,774 log lines for the demo). The
    sources' files are opened at once, as they were listed; the first problem in the config's
    order is the one raised."""
    from yxanul_ray.hub import at_once, hf_token
    from yxanul_ray.sources import Redacted, text_field_problem
    from yxanul_ray.stage_data import read_spec

    def problem(files) -> str | None:
        token = Redacted(hf_token() if files.kind == "hf" else None)
        return text_field_problem(read_spec(job, files), token)

    names = list(listing.files)
    for name, found in zip(names, at_once(lambda name: problem(listing.files[name]), names)):
        if found:
            raise ConfigError(f"{job.path}: sources.{name}.text_field: {found}; fix: sources.{name}.text_field, "
                              "the field that holds each document's text")


def partial_copies(job: JobSpec, listing: SourceListing) -> list[str]:
    """The Hub sources whose files are a split the Hub converted to parquet only in part."""
    from yxanul_ray.hub import hub_relative
    from yxanul_ray.hub_layout import is_partial_copy

    return [name for name, files in listing.files.items()
            if files.kind == "hf" and is_partial_copy(hub_relative(job.sources[name], files.paths))]


def check_resume(job: JobSpec, checkpoint: str) -> tuple[JobSpec, SourceListing]:
    """The job to resume `checkpoint` with (`job`, reading the Hub commits the run read where it
    names none) and its sources' listing, for the coordinator. Raise ConfigError if it cannot
    continue that run (see resume_check), its sources' files included, or if its tokenizer at the
    run's commit does not load or fit the model (check_tokenizer); print the changes it will follow."""
    from yxanul_ray.resume_check import review_resume, with_saved_holdouts, with_saved_revisions
    from yxanul_ray.tokenizer import tokenizer_identity

    state, saved_raw = checked_checkpoint(checkpoint)
    saved_path = storage_join(checkpoint, "job.json")
    try:
        saved = job_from_dict(saved_raw, saved_path)
    except ConfigError as e:
        # Written by another version of this project (a setting since renamed or removed): the
        # resume itself reads only state.json and the tensors, so it goes on, unchecked, as before.
        print(f"resume: warning: not compared with the config, {saved_path} does not load in this version ({e})",
              flush=True)
        saved = None
    # At the Hub commits the run read, not the ones the config's names serve now.
    # Its held-out documents stay the run's, so validation goes on measuring the same ones.
    job = with_saved_holdouts(saved, with_saved_revisions(saved, job)) if saved else job
    job, listing = checked_at_pinned_commits(job, size_holdouts=False)
    if saved is None:
        return job, listing
    files_now = listing.manifests if "files" in state.coordinator else None  # recorded since this version's checkpoints
    review = review_resume(saved, job, state, files_now, tokenizer_identity(job.data.tokenizer, job.data.hf_endpoint))
    if review.conflicts:
        raise ConfigError(
            f"{job.path}: cannot resume {checkpoint} (stage {state.stage + 1}, {state.step_in_stage} steps in): the "
            "config differs from that run where the resume cannot follow it:\n  - " + "\n  - ".join(review.conflicts)
            + f"\nfix: resume with the run's own settings and files ({saved_path} holds the settings), changing only "
            "stages not yet begun, the optimizer, the worker count at a stage boundary, logging or storage")
    for note in review.notes:
        print(f"resume: {note}", flush=True)
    return job, listing


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
    if job.run.use_gpu and gpus < job.run.workers:
        fix = f"--set run.workers={gpus}" if gpus else "--set run.use_gpu=false (CPU workers)"
        raise ConfigError(f"{job.path}: run.use_gpu: {job.run.workers} GPU worker(s), but no Ray cluster was running "
                          f"and the one started here, this machine alone, has {gpus} GPU(s); fix: {fix}, or start or "
                          "join a cluster with GPU nodes (`ray start`, `ray job submit`)")
    cpus = resources.get("CPU", 0)
    shortfall = cpu_shortfall(job, cpus)
    if shortfall:
        problem, fix = shortfall
        raise ConfigError(f"{job.path}: {problem}, but no Ray cluster was running and the one started here has "
                          f"{cpus:g} logical CPUs; fix: {fix}")


def cpu_shortfall(job: JobSpec, cpus: float) -> tuple[str, str] | None:
    """(what the train workers and one data task at a time ask for beyond `cpus` logical CPUs,
    the fix), or None. Train workers hold theirs for the whole run; Ray Data's tasks need
    data.data_cpus each beside them."""
    run, data_cpus = job.run, job.data.data_cpus
    train = run.workers * run.cpus_per_worker
    if train + data_cpus <= cpus:
        return None
    if data_cpus > cpus:
        return (f"data.data_cpus: each data task asks for {data_cpus:g} logical CPUs",
                f"--set data.data_cpus={min(0.25, cpus):g}")
    fits = math.floor((cpus - data_cpus) / run.workers * 1000) / 1000  # rounded down, so it does fit
    fix = (f"--set run.cpus_per_worker={fits:g}" if fits >= 0.1 else
           f"--set run.workers={max(1, int((cpus - data_cpus) // run.cpus_per_worker))}")
    return (f"run.cpus_per_worker: {run.workers} train worker(s) x {run.cpus_per_worker:g} logical CPUs and a data "
            f"task of {data_cpus:g} (data.data_cpus) ask for {train + data_cpus:g}", fix)


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


def check_plan(job: JobSpec) -> None:
    """The stages' batches divide among the workers (curriculum.plan_stage), else a ConfigError."""
    from yxanul_ray.curriculum import plan_curriculum

    try:
        plan_curriculum(job.curriculum, job.run.workers)
    except ValueError as e:
        raise ConfigError(f"{job.path}: curriculum.stages: {e} (run.workers={job.run.workers})") from None


def preflight(job: JobSpec, resume: str | None = None) -> tuple[JobSpec, SourceListing, str | None]:
    """Everything a run checks and settles before any cluster work: (the job as the run takes it,
    its sources' listing, the resume checkpoint resolved). Raises ConfigError for bad input."""
    check_plan(job)
    job = absolute_paths(job)
    check_storage(job)
    # The tokenizer is checked at the Hub commit the run reads (a resume's is its run's).
    if resume:
        job, listing = check_resume(job, resume)  # not a checkpoint, or not this run's: refused before Ray starts
        return job, listing, resolve_storage(resume)
    job, listing = checked_at_pinned_commits(job)
    return job, listing, None


def run_training(job: JobSpec, resume: str | None = None, train_loop=None) -> int:
    """Run the job; `train_loop` replaces the workers' loop (a diagnostic's hook)."""
    started_at = time.time()
    job, listing, resume = preflight(job, resume)
    cur = job.curriculum
    run_name = f"{job.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage_join(job.run.storage_path, run_name)
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
        print(e, flush=True)  # each failed rank's error
        print(f"training failed; {where_to_go_on()}", flush=True)
        return 1
    if result.return_value:  # the workers' loop returns only why it was refused (train_loop_per_worker)
        print(f"training refused: {result.return_value}; {where_to_go_on()}", flush=True)
        return 1
    print(f"run finished: checkpoints under {run_dir}", flush=True)
    if result.checkpoint is not None:
        print(f"final checkpoint: {storage_join(run_dir, os.path.basename(result.checkpoint.path))}", flush=True)
    return 0


def start_and_fit(job: JobSpec, listing: SourceListing, resume: str | None, run_name: str, run_dir: str,
                  started_at: float, train_loop=None, keep_checkpoints: int | None = None):
    """Ray's start (or the cluster this process joined), the coordinator and the trainer, and the
    run: Ray Train's result. The coordinator (and its packing actor) ends with the run."""
    ray = start_ray()
    reclaim_sigterm()  # ray.init put its own SIGTERM handler in place of run_training's
    check_local_resources(ray, job)
    from yxanul_ray.coordinator import CurriculumCoordinator
    from yxanul_ray.train_loop import train_loop_per_worker

    warn_of_node_local_paths(ray, job)
    # Restartable as the workers are: a crash of its process costs a restart from the last
    # checkpoint, as a worker's does, instead of the run (see coordinator.py).
    coordinator = CurriculumCoordinator.options(name=f"yxanul-coordinator-{run_name}",
                                                max_restarts=job.run.max_failures).remote(
        job.to_dict(), job.run.workers, listing, hub_token(job))
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
        "job": job.to_dict(), "coordinator": coordinator, "run_dir": run_dir, "resume_from": resume,
        "started_at": started_at}, keep_checkpoints)
    print(f"run {run_name}: {job.run.workers} worker(s), storage {run_dir}", flush=True)
    result = trainer.fit()
    ray.kill(coordinator, no_restart=True)  # a driver that runs more (compare's arms) holds no idle actors
    return result
