"""The checks and settlements a run makes before any cluster work: the plan, paths made absolute,
storage, the tokenizer, Hub commits pinned, sources listed and their text fields, held-out sets
sized, a resume reviewed against its checkpoint. Bad input is a ConfigError naming the file,
the field and the fix (exit 2) before Ray starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from yxanul_ray.config import job_from_dict, read_yaml
from yxanul_ray.config_rules import hub_endpoint_problem
from yxanul_ray.hub import Redacted
from yxanul_ray.specs import ConfigError, JobSpec, stage_stride
from yxanul_ray.storage import StorageError, is_uri, open_storage, resolve_storage, storage_join
from yxanul_ray.tracker import check_tracker

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
    run = dataclasses.replace(job.run, storage_path=durable_storage(job.run.storage_path))
    tokenizer = job.data.tokenizer
    # A tokenizer.json or its directory here, not a Hub id; `gpt2` is the name even beside a gpt2/ directory.
    if tokenizer != "gpt2" and os.path.exists(os.path.expanduser(tokenizer)):
        # The file itself, so job.json names what the run read; a directory without one: check_tokenizer says so.
        with contextlib.suppress(FileNotFoundError):
            tokenizer = os.path.abspath(local_tokenizer_file(tokenizer))
    return dataclasses.replace(job, sources=sources, run=run, data=dataclasses.replace(job.data, tokenizer=tokenizer))


RAY_WORKING_DIR_COPY = os.sep + os.path.join("runtime_resources", "working_dir_files") + os.sep
"""Where Ray unpacks a submitted job's working dir (in its session's temp dir, deleted later)."""


def durable_storage(path: str, cwd: str | None = None) -> str:
    """run.storage_path made absolute. A relative one under `ray job submit` would land in Ray's
    temporary copy of the working dir, which Ray deletes: it goes under Ray Train's default
    results directory (~/ray_results) instead, and the run says so."""
    cwd = cwd or os.getcwd()
    if is_uri(path) or os.path.isabs(os.path.expanduser(path)) or RAY_WORKING_DIR_COPY not in cwd + os.sep:
        return resolve_storage(os.path.join(cwd, os.path.expanduser(path)) if not is_uri(path) else path)
    durable = os.path.join(os.path.expanduser("~/ray_results"), path)
    print(f"run.storage_path {path!r} is relative, and this job runs in Ray's temporary copy of its working dir "
          f"({cwd}), which Ray deletes: checkpoints go to {durable} (an absolute path or a bucket chooses)",
          flush=True)
    return durable


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
    check_sources(job, listing)
    job, notes = sized_holdouts(job, listing.files, tokenizer) if size_holdouts else (job, [])
    for note in notes:
        print(note, flush=True)
    for name in partial_copies(job, listing):
        print(f"note: source {name} reads the Hub's parquet copy of split {job.sources[name].split!r}, which holds "
              "only its first part (a partial-<split> folder); past it the source repeats its documents, in a new "
              "order (a wrap, counted)", flush=True)
    return job, listing


def check_sources(job: JobSpec, listing: SourceListing) -> None:
    """Each source can give the run documents: its text_field is a field of its first file
    (readers.text_field_problem), and its files' metadata and first documents show text
    (survey.source_problem) and enough of it for every stage (survey.stage_shortfall); else a
    ConfigError naming the source, the file and the fix. The read tasks would otherwise fail
    after the cluster and the first stages had started, and every restart again. A source the
    run will draw more than once is named in a warning. The sources are surveyed at once; the
    first problem in the config's order is the one raised."""
    from yxanul_ray.hub import at_once, hf_token
    from yxanul_ray.readers import text_field_problem
    from yxanul_ray.stage_data import read_spec
    from yxanul_ray.survey import repeat_warning, source_problem, stage_shortfall, survey_source

    def check(name: str) -> tuple[str | None, str | None]:
        files = listing.files[name]
        spec, token = read_spec(job, files), Redacted(hf_token() if files.kind == "hf" else None)
        field = text_field_problem(spec, token)
        if field:
            return (f"{job.path}: sources.{name}.text_field: {field}; fix: sources.{name}.text_field, the field "
                    "that holds each document's text"), None
        survey = survey_source(spec, token)
        needs = source_needs(job, name)
        problem = source_problem(survey, spec.text_field) or stage_shortfall(survey, needs)
        if problem:
            return f"{job.path}: sources.{name}: {problem}", None
        return None, repeat_warning(survey, sum(tokens for _, tokens in needs))

    names = list(listing.files)
    for error, warning in at_once(check, names):
        if error:
            raise ConfigError(error)
        if warning:
            print(warning, flush=True)


def source_needs(job: JobSpec, name: str) -> list[tuple[str, int]]:
    """(stage name, tokens the stage reads from source `name`) for each stage that draws on it:
    its share of the stage's budget, and more where rows overlap (a stride below seq_len)."""
    cur = job.curriculum
    return [(st.name, int(st.tokens * st.mix[name] * st.seq_len / stage_stride(cur, st)))
            for st in cur.stages if st.mix.get(name, 0) > 0]


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
    from yxanul_ray.checkpoint import checked_checkpoint
    from yxanul_ray.resume_check import review_resume, with_saved_holdouts, with_saved_revisions
    from yxanul_ray.tokenizer import tokenizer_identity

    state, saved_raw = checked_checkpoint(checkpoint)
    saved_path = storage_join(checkpoint, "job.json")
    try:
        saved = job_from_dict(saved_raw, saved_path, check_files=False)
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


def check_plan(job: JobSpec) -> None:
    """The stages' batches divide among the workers (curriculum.check_world_size), else a
    ConfigError; for an elastic group, among its min and max counts (a count between that does
    not divide pads its steps, which the run survives)."""
    from yxanul_ray.curriculum import check_world_size

    for workers in sorted({job.run.min_workers, job.run.max_workers}):
        try:
            check_world_size(job.curriculum, workers)
        except ValueError as e:
            raise ConfigError(f"{job.path}: curriculum.stages: {e} (run.workers={job.run.workers})") from None


def cpu_shortfall(job: JobSpec, cpus: float) -> tuple[str, str] | None:
    """(what the train workers and one data task at a time ask for beyond `cpus` logical CPUs,
    the fix), or None. Train workers hold theirs for the whole run; Ray Data's tasks need
    data.data_cpus each beside them."""
    run, data_cpus = job.run, job.data.data_cpus
    train = run.min_workers * run.cpus_per_worker
    if train + data_cpus <= cpus:
        return None
    if data_cpus > cpus:
        return (f"data.data_cpus: each data task asks for {data_cpus:g} logical CPUs",
                f"--set data.data_cpus={min(0.25, cpus):g}")
    fits = math.floor((cpus - data_cpus) / run.min_workers * 1000) / 1000  # rounded down, so it does fit
    fix = (f"--set run.cpus_per_worker={fits:g}" if fits >= 0.1 else
           f"--set run.workers={max(1, int((cpus - data_cpus) // run.cpus_per_worker))}")
    return (f"run.cpus_per_worker: {run.min_workers} train worker(s) x {run.cpus_per_worker:g} logical CPUs and a data "
            f"task of {data_cpus:g} (data.data_cpus) ask for {train + data_cpus:g}", fix)


def preflight(job: JobSpec, resume: str | None = None) -> tuple[JobSpec, SourceListing, str | None]:
    """Everything a run checks and settles before any cluster work: (the job as the run takes it,
    its sources' listing, the resume checkpoint resolved). Raises ConfigError for bad input."""
    check_plan(job)
    check_tracker(job.run.tracker)
    job = absolute_paths(job)
    check_storage(job)
    # The tokenizer is checked at the Hub commit the run reads (a resume's is its run's).
    if resume:
        job, listing = check_resume(job, resume)  # not a checkpoint, or not this run's: refused before Ray starts
        return job, listing, resolve_storage(resume)
    job, listing = checked_at_pinned_commits(job)
    return job, listing, None
