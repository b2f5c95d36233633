"""Checkpoints: model, optimizer, random number generators, trainer state and the coordinator's
curriculum state.

A checkpoint is a directory (locally, or in storage at a URI): model.pt (the portable state_dict
both backends share), optimizer.pt, rng.pt (the generators' states), state.json (TrainState:
step, tokens, stage, step in stage, per-source tokens, the coordinator's cursors, stats and file
lists, loss history) and job.json (the resolved config, Hub commits pinned). Tensors load with
weights_only=True; the rest is JSON.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from yxanul_ray.specs import ConfigError
from yxanul_ray.storage import is_uri, storage_split


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    tokens: int = 0
    """Trained target positions done, all workers together."""
    stage: int = 0
    step_in_stage: int = 0
    tokens_by_source: dict[str, int] = field(default_factory=dict)
    stage_tokens_by_source: list[dict[str, int]] = field(default_factory=list)
    """Realised mix per finished or current stage, in trained tokens."""
    loss_history: list[list[float]] = field(default_factory=list)
    """[global tokens, mean loss over the log interval] pairs, for the loss plot."""
    validation: list[dict] = field(default_factory=list)
    """Per stage end, and per token point where curriculum.validation_every_tokens asks:
    {"stage", "step", "tokens", "seconds" (train_seconds then), "loss": {source: loss}}."""
    train_seconds: float = 0.0
    """Training wall time on rank 0: from the first batch in hand, stage switches included,
    validation left out (evaluation.TrainClock)."""
    initial_weights: str = ""
    """Digest of the weights before the first step (evaluation.weights_digest), where the run
    validates at token points; runs with the same digest started from the same weights."""
    coordinator: dict = field(default_factory=dict)
    """The coordinator's state: cursors at each stage's start, per-stage source stats, each
    source's file list (names and sizes), which the cursors index, and the tokenizer's identity
    (tokenizer.tokenizer_identity)."""
    resumes: int = 0
    workers: int = 0
    """The worker count that wrote the checkpoint (0 in an earlier version's): a restart on
    another count is a resize, and the console says so."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(**d)


def save_checkpoint(path: str, model_state: dict, optimizer_state: dict, state: TrainState, job: dict) -> None:
    """Write a checkpoint directory now, with this process's random number generators."""
    write_checkpoint_files(path, model_state, optimizer_state, rng_state(), state.to_dict(), job)




def write_checkpoint_files(path: str, model_state: dict, optimizer_state: dict, rng: dict, state: dict,
                           job: dict) -> None:
    """The checkpoint's files in directory `path` (made if need be)."""
    os.makedirs(path, exist_ok=True)
    torch.save(model_state, os.path.join(path, "model.pt"))
    torch.save(optimizer_state, os.path.join(path, "optimizer.pt"))
    torch.save(rng, os.path.join(path, "rng.pt"))
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump(state, f)
    with open(os.path.join(path, "job.json"), "w") as f:
        json.dump(job, f, indent=1, default=list)


REQUIRED_FILES = ("model.pt", "optimizer.pt", "state.json", "job.json")
"""What a resume reads (rng.pt too where it is there: checkpoints of earlier versions lack it)."""


def checkpoints_in(run_dir: str) -> list[str]:
    """The names of the checkpoint directories in a run's directory (a directory or a URI),
    oldest first: Ray Train names them checkpoint_<time>."""
    from yxanul_ray.storage import subdirectories

    return [name for name in subdirectories(run_dir) if name.startswith("checkpoint_")]


def latest_checkpoint(run_dir: str, names: list[str] | None = None) -> str | None:
    """The path of the newest whole checkpoint in a run's directory (of `names`, checkpoints_in's
    listing where the caller has it already), or None. Ray Train copies a checkpoint into storage
    in the background, so a run stopped during the copy leaves one that lacks files or has one cut
    short: it is passed over, for the one before it."""
    from yxanul_ray.storage import files_under, storage_join

    for name in reversed(checkpoints_in(run_dir) if names is None else names):
        path = storage_join(run_dir, name)
        present = set(files_under(path))
        if set(REQUIRED_FILES) <= present and _reads_whole(path, present):
            return path
    return None


def _reads_whole(path: str, present: set[str]) -> bool:
    try:
        load_state(path)
        check_tensor_files(path, present)
    except (NotACheckpoint, DamagedCheckpoint):
        return False
    return True


class NotACheckpoint(FileNotFoundError):
    """`path` lacks a checkpoint's `missing` file (or is not a directory at all)."""

    def __init__(self, path: str, missing: str):
        super().__init__(f"{path} is not a yxanul-ray checkpoint (missing {missing})")
        self.path, self.missing = path, missing


class DamagedCheckpoint(ValueError):
    """A file of the checkpoint at `path` that is there but does not read as what this project
    wrote: a copy cut short, or another file under its name."""

    def __init__(self, path: str, name: str, why: str):
        super().__init__(f"{path}: {name} {why}")
        self.path, self.name, self.why = path, name, why


def load_state(path: str) -> tuple[TrainState, dict]:
    """TrainState and the job dict, without touching the tensors (cheap, for the driver); `path`
    a directory or a storage URI. NotACheckpoint if either file is not there, DamagedCheckpoint
    if either does not read."""
    from yxanul_ray.storage import read_text, storage_join

    texts = {}
    for name in ("state.json", "job.json"):
        try:
            texts[name] = read_text(storage_join(path, name))
        except (FileNotFoundError, NotADirectoryError):
            raise NotACheckpoint(path, name) from None
        except UnicodeDecodeError as e:
            raise DamagedCheckpoint(path, name, f"is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                                    f"{e.start})") from None
    try:
        raw_state = json.loads(texts["state.json"])
        job = json.loads(texts["job.json"])
    except json.JSONDecodeError as e:
        name = "state.json" if e.doc is texts["state.json"] else "job.json"
        raise DamagedCheckpoint(path, name, f"is not whole JSON ({e.msg} at line {e.lineno}, column {e.colno}; "
                                f"{len(e.doc):,} characters)") from None
    try:
        state = TrainState.from_dict(raw_state)
    except TypeError as e:  # not a mapping, or keys TrainState does not have
        raise DamagedCheckpoint(path, "state.json", f"does not hold a trainer state ({e})") from None
    if not isinstance(job, dict):
        raise DamagedCheckpoint(path, "job.json", f"does not hold a job's settings (a {type(job).__name__})")
    return state, job


TENSOR_FILES = ("model.pt", "optimizer.pt", "rng.pt")


def check_tensor_files(path: str, present: set[str] | None = None) -> None:
    """Before a resume or an export reads them: NotACheckpoint if model.pt or optimizer.pt is not
    there; DamagedCheckpoint if one of them, or rng.pt, is not a whole torch.save archive. Only
    each archive's directory is read (the last bytes of a zip file), not the tensors: a copy cut
    short has lost it, and another kind of file has none. The train workers would otherwise fail
    loading, and Ray Train would start them again for each of run.max_failures. `present`: the
    checkpoint's file names, where the caller has listed them already (one listing per bucket
    checkpoint, not two)."""
    import zipfile

    from yxanul_ray.storage import files_under, open_random_access, storage_join

    present = set(files_under(path)) if present is None else present
    for name in TENSOR_FILES:
        if name not in present:
            if name in REQUIRED_FILES:
                raise NotACheckpoint(path, name)
            continue  # rng.pt: checkpoints of earlier versions lack it
        try:
            with open_random_access(storage_join(path, name)) as f, zipfile.ZipFile(f) as archive:
                entries = archive.namelist()
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise DamagedCheckpoint(path, name, f"is cut short or is not a file torch.save wrote ({e})") from None
        if not any(entry.endswith("/data.pkl") for entry in entries):
            raise DamagedCheckpoint(path, name, "is a zip archive but not one torch.save wrote (no data.pkl in it)")


def load_model_tensors(path: str, map_location="cpu") -> dict:
    """The model's state_dict alone (what an export needs; the optimizer's is twice its size)."""
    return torch.load(os.path.join(path, "model.pt"), map_location=map_location, weights_only=True)


def load_tensors(path: str, map_location="cpu") -> tuple[dict, dict]:
    model = torch.load(os.path.join(path, "model.pt"), map_location=map_location, weights_only=True)
    optim = torch.load(os.path.join(path, "optimizer.pt"), map_location=map_location, weights_only=True)
    return model, optim


def rng_state() -> dict:
    """This process's random number generators: torch (CPU, and CUDA where present), numpy and
    Python's. The model draws nothing after its initialisation today (no dropout, data order is
    seeded), but whatever does later (dropout, sampled eval) resumes on the same sequence. In
    tensors, ints and tuples only, so it loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(path: str) -> bool:
    """Put back the generators saved in the checkpoint at `path`; False for a checkpoint written
    before they were saved (the generators are left as they are)."""
    file = os.path.join(path, "rng.pt")
    if not os.path.exists(file):
        return False
    state = torch.load(file, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    return True
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
    run_dir, name = storage_split(damage.path)
    others = latest_checkpoint(run_dir, [other for other in checkpoints_in(run_dir) if other != name])
    fix = (f"pass the run's latest whole checkpoint: {given_as} {others}, or copy this one again" if others else
           "pass another checkpoint of the run, or copy this one again from where it was written")
    return ConfigError(f"{given_as} {damage.path}: {damage.name} {damage.why}; fix: {fix}")


def not_a_checkpoint(path: str, missing: str, given_as: str = "--resume") -> ConfigError:
    """The error for a checkpoint path (`given_as`: how the user gave it) that lacks `missing`. A
    run's directory given instead names its latest whole checkpoint in the fix."""
    fix = "pass a checkpoint directory (a checkpoint_* directory in the run's storage; the run prints its final one)"
    if not is_uri(path) and not os.path.isdir(path):
        return ConfigError(f"{given_as} {path}: {'not a' if os.path.exists(path) else 'no such'} directory; fix: "
                           f"{fix}")
    inside = checkpoints_in(path)
    latest = latest_checkpoint(path, inside)
    if latest:
        fix = f"pass one of the {len(inside)} checkpoints in it, the latest: {given_as} {latest}"
    return ConfigError(f"{given_as} {path}: not a yxanul-ray checkpoint (it holds no {missing}); fix: {fix}")
