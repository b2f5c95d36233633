"""The rules across a job's fields, checked once its fields have their types: sources named
once and reachable, the model's shape, the stages' budgets, batches and mixes, FP8 where it
can run. Each problem is a ConfigError naming the field and the fix.
"""

from __future__ import annotations

import glob
import math
import os
import urllib.parse

from yxanul_ray.presets import PRESETS, SHAPE_FIELDS, ModelShape
from yxanul_ray.specs import ConfigError, JobSpec, StageSpec
from yxanul_ray.storage import is_uri
from yxanul_ray.tracker import TRACKERS


def validate(job: JobSpec, check_files: bool = True) -> None:
    """Raise ConfigError for the first rule `job` breaks. `check_files` False skips the rules
    that look at this machine's files (a local path's matches, a mirror's directory): a job
    validated where the run started is rebuilt that way on nodes that may not see those paths."""
    p = job.path

    def fail(where: str, msg: str) -> None:
        raise ConfigError(f"{p}: {where}: {msg}")

    for name, src in job.sources.items():
        where = f"sources.{name}"
        if src.hf is not None and src.path is not None:
            fail(where, f"both `hf` ({src.hf}) and `path` ({src.path}) are set; keep one (from the command line, "
                 f"--set {where}.hf=null reads the path)")
        if src.hf is None and src.path is None:
            fail(where, "give exactly one of `hf` (a hub dataset id) or `path` (local files)")
        if src.revision is not None and src.hf is None:
            fail(f"{where}.revision", "applies to a Hub dataset (`hf`) only; remove it for local files")
        if check_files and src.hf_mirror is not None and not os.path.isdir(os.path.expanduser(src.hf_mirror)):
            fail(f"{where}.hf_mirror", f"{src.hf_mirror!r} is not a directory")
        # (a URI is listed at the start)
        if check_files and src.path is not None and not is_uri(src.path) and not _matches(src.path):
            fail(f"{where}.path", f"{src.path!r} matches no file; fix the path, or build the corpus it names: "
                 "`yxanul-ray demo-data data/demo` (the demo's), `yxanul-ray demo-data data/corpus --tokens 50M` "
                 "(configs/compare_cpu.yaml's)")
        if src.validation_docs < 0:
            fail(f"{where}.validation_docs", "must be >= 0")

    if job.model.preset not in PRESETS:
        fail("model.preset", f"{job.model.preset!r} is not one of {', '.join(PRESETS)}")
    for key in job.model.overrides:  # their types: config._typed_overrides
        if key not in SHAPE_FIELDS:
            fail(f"model.overrides.{key}", f"unknown model field; valid: {', '.join(SHAPE_FIELDS)}")
    shape = job.model.shape
    for fname, msg in shape.problems():
        fail(f"model.overrides.{fname}", msg)

    opt = job.optimizer
    if opt.peak_lr <= 0:
        fail("optimizer.peak_lr", "must be > 0")
    if not all(0 <= b < 1 for b in opt.betas):
        fail("optimizer.betas", f"each beta must be in [0, 1), got {list(opt.betas)}")
    if opt.warmup_tokens < 0:
        fail("optimizer.warmup_tokens", "must be >= 0")
    if not 0 <= opt.min_lr_ratio <= 1:
        fail("optimizer.min_lr_ratio", "must be in [0, 1]")
    if not opt.eps > 0:  # 0: a parameter whose gradient is 0 (an embedding row no batch used) becomes 0/0, NaN
        fail("optimizer.eps", f"must be > 0, got {opt.eps}")
    if opt.grad_clip < 0 or opt.weight_decay < 0:
        fail("optimizer.grad_clip" if opt.grad_clip < 0 else "optimizer.weight_decay", "must be >= 0")

    run = job.run
    if run.min_workers < 1 or run.max_workers < run.min_workers:
        given = list(run.workers) if run.elastic else run.workers
        fail("run.workers", f"must be a count >= 1, or [min, max] with 1 <= min <= max; got {given}")
    if run.resize_check_s < 0:
        fail("run.resize_check_s", "must be >= 0")
    if run.cpus_per_worker <= 0:
        fail("run.cpus_per_worker", "must be > 0")
    if run.log_every_steps < 1:
        fail("run.log_every_steps", f"must be >= 1, got {run.log_every_steps}")
    if run.checkpoint_every_tokens < 0:
        fail("run.checkpoint_every_tokens", "must be >= 0 (0: stage boundaries only)")
    if run.checkpoint_every_s < 0:
        fail("run.checkpoint_every_s", "must be >= 0 (0: off)")
    if run.keep_checkpoints is not None and run.keep_checkpoints < 0:
        fail("run.keep_checkpoints", f"must be >= 0 (null keeps every checkpoint), got {run.keep_checkpoints}")
    if run.max_failures < -1:
        fail("run.max_failures", "must be >= 0, or -1 for no limit")
    if run.tracker not in TRACKERS:
        fail("run.tracker", f"{run.tracker!r} is not one of {', '.join(TRACKERS)}")
    if job.data.tokenize_tasks < 1 or job.data.data_cpus <= 0:
        fail("data.tokenize_tasks" if job.data.tokenize_tasks < 1 else "data.data_cpus", "must be > 0")
    if job.data.object_store_mb_per_source < 16:
        fail("data.object_store_mb_per_source", "must be >= 16 (MiB of data in flight per source)")
    if job.data.max_doc_chars < 1000:
        fail("data.max_doc_chars", "must be >= 1000")
    if job.data.hf_endpoint is not None:
        problem = hub_endpoint_problem(job.data.hf_endpoint)
        if problem:
            fail("data.hf_endpoint", problem)

    _validate_curriculum(job, shape, fail)


def hub_endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with a Hub endpoint (data.hf_endpoint, or HF_ENDPOINT), or None."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{endpoint!r} is not an http(s) URL; e.g. https://huggingface.co, or a Hub mirror's address"
    if parts.username or parts.password:
        # The endpoint is printed and saved in job.json; a token belongs in HF_TOKEN.
        return "holds credentials, which would reach the logs and job.json; give them as HF_TOKEN instead"
    if parts.query or parts.fragment:
        return f"{endpoint!r} has a query or fragment; give the Hub's address alone"
    return None


def _validate_curriculum(job: JobSpec, shape: ModelShape, fail) -> None:
    cur = job.curriculum
    if not cur.stages:
        fail("curriculum.stages", "needs at least one stage")
    if not 0 <= cur.overlap < 1:
        fail("curriculum.overlap", f"must be in [0, 1), got {cur.overlap}")
    if not 0 < cur.validation_seq_len <= shape.max_seq_len:
        fail("curriculum.validation_seq_len", f"must be in 1..{shape.max_seq_len}")
    if cur.validation_rows < 0:
        fail("curriculum.validation_rows", f"must be >= 0 (0: no validation), got {cur.validation_rows}")
    if cur.validation_every_tokens < 0:
        fail("curriculum.validation_every_tokens", f"must be >= 0 (0: at stage ends only), got "
             f"{cur.validation_every_tokens}")
    seen: set[str] = set()
    for i, st in enumerate(cur.stages):
        where = f"curriculum.stages[{i}]"
        if st.name in seen:
            fail(f"{where}.name", f"duplicate stage name {st.name!r}; stage names must be unique")
        seen.add(st.name)
        if st.seq_len <= 0 or st.seq_len > shape.max_seq_len:
            fail(f"{where}.seq_len", f"{st.seq_len} must be in 1..{shape.max_seq_len} (the model's "
                 "max_seq_len; raise model.overrides.max_seq_len for longer)")
        if st.tokens <= 0:
            fail(f"{where}.tokens", f"must be > 0, got {st.tokens}")
        if (st.batch_size is None) == (st.tokens_per_step is None):
            fail(f"{where}.batch_size", "give exactly one of batch_size and tokens_per_step")
        if st.tokens_per_step is not None and (st.tokens_per_step <= 0 or st.tokens_per_step % st.seq_len):
            fail(f"{where}.tokens_per_step", f"{st.tokens_per_step} must be a positive multiple of "
                 f"seq_len {st.seq_len}")
        batch_field = "batch_size" if st.batch_size is not None else "tokens_per_step"
        if st.global_batch <= 0:
            fail(f"{where}.{batch_field}", f"batch of {st.global_batch} sequences must be > 0")
        if st.fp8 and st.global_batch % 8:  # the predecessor's rule for FP8 GEMM efficiency
            fail(f"{where}.{batch_field}", f"batch of {st.global_batch} sequences in an FP8 stage is not a multiple "
                 f"of 8; try {max(8, round(st.global_batch / 8) * 8)}, or fp8: false")
        if st.micro_batch_size is not None and st.micro_batch_size <= 0:
            fail(f"{where}.micro_batch_size", "must be > 0")
        if st.lr_scale <= 0:
            fail(f"{where}.lr_scale", "must be > 0")
        if st.overlap is not None and not 0 <= st.overlap < 1:
            fail(f"{where}.overlap", f"must be in [0, 1), got {st.overlap}")
        _validate_mix(job, st, where, fail)
        if st.fp8:
            _validate_fp8(shape, st, where, fail)
    total = sum(st.tokens for st in cur.stages)
    if total != cur.target_tokens:
        fail("curriculum.target_tokens", f"{cur.target_tokens:,} but the stage budgets add up to "
             f"{total:,}; make them equal (the run stops at the target, exactly at a stage's end)")


def _validate_mix(job: JobSpec, st: StageSpec, where: str, fail) -> None:
    if not st.mix:
        fail(f"{where}.mix", "needs at least one source")
    for name, weight in st.mix.items():
        if name not in job.sources:
            fail(f"{where}.mix.{name}", f"names no declared source; declared: {', '.join(job.sources)}")
        if weight < 0:
            fail(f"{where}.mix.{name}", f"weight {weight} must be >= 0")
    total = sum(st.mix.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        fail(f"{where}.mix", f"weights sum to {total:.6g}; they must sum to 1")


def _validate_fp8(shape: ModelShape, st: StageSpec, where: str, fail) -> None:
    # TE's FP8 GEMMs need hidden sizes % 16 and the token count % 16 (backward), checked here so
    # a bad shape fails at config time rather than mid-run.
    for fname in ("d_model", "ffn_hidden"):
        if getattr(shape, fname) % 16:
            fail(f"{where}.fp8", f"model {fname}={getattr(shape, fname)} is not a multiple of 16, "
                 "which FP8 GEMMs need; set fp8: false or change the model")
    micro = st.micro_batch_size or 8  # the smallest per-worker batch the 8-multiple rule allows
    if (micro * st.seq_len) % 16:
        fail(f"{where}.fp8", f"micro-batch tokens {micro}x{st.seq_len} are not a multiple of 16, "
             "which FP8 GEMMs need; use an even micro_batch_size or fp8: false")


def _matches(pattern: str) -> bool:
    return bool(glob.glob(os.path.expanduser(pattern)))
