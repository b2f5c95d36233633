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
import logging
import os
import random
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(**d)


def save_checkpoint(path: str, model_state: dict, optimizer_state: dict, state: TrainState, job: dict) -> None:
    """Write a checkpoint directory now, with this process's random number generators."""
    _write(path, model_state, optimizer_state, rng_state(), state.to_dict(), job)


@dataclass
class CheckpointSnapshot:
    """Everything a checkpoint holds, copied to host memory at one moment. Written later, on
    another thread while training goes on, it is still that moment's state: the optimizer
    updates its tensors in place and the generators move on, so nothing here refers to them.
    The copy is the part training waits for; the write is not (writing the 270m preset's 3.3 GB
    of weights and AdamW state held up a stage switch on an H200 node for 3.56 s)."""

    model_state: dict
    optimizer_state: dict
    rng: dict
    state: dict
    job: dict

    @classmethod
    def take(cls, model_state: dict, optimizer_state: dict, state: TrainState, job: dict,
             staging: HostStaging | None = None) -> CheckpointSnapshot:
        """With `staging`, the tensors go into its buffers (which this snapshot then holds until
        it is written); without, into new ones."""
        copy = staging.copy if staging is not None else host_copy
        return cls(copy(model_state, MODEL_PATH), copy(optimizer_state, OPTIMIZER_PATH), rng_state(),
                   state.to_dict(), json.loads(json.dumps(job, default=list)))

    @staticmethod
    def reserve(model_state: dict, optimizer_state: dict, staging: HostStaging) -> None:
        """Has `staging` make the buffers `take` will copy these states (or ones shaped like
        them) into, on a thread of its own. The first snapshot otherwise makes them while training
        waits: pinning the 270m preset's 3.3 GB took 2.7 s of an H200 node's first stage switch,
        and later snapshots 0.06 s. Not beside training steps either: CUDA calls wait while pages
        are pinned (one step of the 270m preset took 2.32 s beside it on an H200, 0.11 s alone)."""
        staging.reserve_async([(model_state, MODEL_PATH), (optimizer_state, OPTIMIZER_PATH)])

    def write(self, path: str) -> None:
        _write(path, self.model_state, self.optimizer_state, self.rng, self.state, self.job)


MODEL_PATH, OPTIMIZER_PATH = ("model",), ("optimizer",)
"""Where a snapshot's two state_dicts' buffers are kept in HostStaging."""


def host_copy(obj, _path: tuple = ()):
    """`obj` (a state_dict: tensors in dicts, lists and tuples) with every tensor copied to new
    host memory, and every container new, so later in-place updates of the originals do not
    reach it."""
    return _map_tensors(obj, _path, lambda t, _: t.detach().to("cpu", copy=True))


class HostStaging:
    """Host buffers for snapshots' tensors, kept from one checkpoint to the next (one snapshot
    at a time: the next is taken after the last is written). Copying into memory already
    mapped is what makes the snapshot cheap: on 2 CPU cores 3.2 GB took 0.22-0.25 s into kept
    buffers and 0.2-6.5 s into new ones (the first time the pages come from the system). On a
    GPU node the buffers are pinned, so the device-to-host copies run at full speed."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.pinned = True
        """False once pinning failed (a host that limits page-locked memory): pageable from then on."""
        self._reserving: threading.Thread | None = None

    def reserve_async(self, states: list[tuple[object, tuple]]) -> None:
        """Makes, on a daemon thread, the buffers that `copy(obj, path)` will need for each
        (obj, path) in `states`; a `copy` waits for it. Only the tensors' shapes, dtypes and
        devices are read here, before the thread starts: training may update the values meanwhile."""
        specs: list[tuple[tuple, torch.Size, torch.dtype, bool]] = []
        for obj, path in states:
            _map_tensors(obj, path, lambda t, p: specs.append((p, t.shape, t.dtype, t.is_cuda)))

        def make_buffers() -> None:
            try:
                for path, shape, dtype, is_cuda in specs:
                    buf = self._buffers.get(path)
                    if buf is None or buf.shape != shape or buf.dtype != dtype:
                        buf = self._buffers[path] = self._empty(shape, dtype, is_cuda)
                        if not buf.is_pinned():
                            buf.zero_()  # its pages now, not in the first copy (pinned ones already are)
            except Exception as e:  # the first copy makes whatever is missing
                log.warning("checkpoint host buffers were not made ahead (%s); the first snapshot makes them", e)

        self.wait_reserved()
        self._reserving = threading.Thread(target=make_buffers, name="checkpoint-host-buffers", daemon=True)
        self._reserving.start()

    def reserving(self) -> bool:
        """Whether the thread `reserve_async` started is still making buffers."""
        return self._reserving is not None and self._reserving.is_alive()

    def wait_reserved(self) -> None:
        if self._reserving is not None:
            self._reserving.join()
            self._reserving = None

    def copy(self, obj, path: tuple = ()):
        self.wait_reserved()
        self._in_flight = False
        copied = _map_tensors(obj, path, self._copy_tensor)
        if self._in_flight:
            # Device-to-host copies into pinned buffers are asynchronous. Synchronized only when
            # some ran: a CPU worker on a GPU node would otherwise make a CUDA context for nothing.
            torch.cuda.synchronize()
        return copied

    def _copy_tensor(self, t: torch.Tensor, path: tuple) -> torch.Tensor:
        buf = self._buffers.get(path)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = self._buffers[path] = self._empty(t.shape, t.dtype, t.is_cuda)
        non_blocking = t.is_cuda and buf.is_pinned()
        self._in_flight |= non_blocking
        return buf.copy_(t.detach(), non_blocking=non_blocking)

    def _empty(self, shape: torch.Size, dtype: torch.dtype, for_cuda: bool) -> torch.Tensor:
        if for_cuda and self.pinned:
            try:
                return torch.empty(shape, dtype=dtype, device="cpu", pin_memory=True)
            except RuntimeError as e:  # slower copies, not a failed checkpoint
                log.warning("checkpoint snapshots use pageable host memory: pinning failed (%s)", e)
                self.pinned = False
        return torch.empty(shape, dtype=dtype, device="cpu")


def _map_tensors(obj, path: tuple, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj, path)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, (*path, k), fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, (*path, i), fn) for i, v in enumerate(obj)]
    if type(obj) is tuple:
        return tuple(_map_tensors(v, (*path, i), fn) for i, v in enumerate(obj))
    return obj  # numbers, strings, None: immutable


def _write(path: str, model_state: dict, optimizer_state: dict, rng: dict, state: dict, job: dict) -> None:
    os.makedirs(path, exist_ok=True)
    torch.save(model_state, os.path.join(path, "model.pt"))
    torch.save(optimizer_state, os.path.join(path, "optimizer.pt"))
    torch.save(rng, os.path.join(path, "rng.pt"))
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump(state, f)
    with open(os.path.join(path, "job.json"), "w") as f:
        json.dump(job, f, indent=1, default=list)


STAGING_PREFIX = "yxanul-ckpt-"


def staging_dir() -> str:
    """A new local directory for one checkpoint's files, which Ray Train copies to storage and
    then deletes. Named for this process: one stopped mid-write is left behind (3.3 GB for the
    270m preset), and `remove_stale_staging_dirs` can tell it from a running process's."""
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")


def remove_stale_staging_dirs(root: str | None = None) -> list[str]:
    """Removes the checkpoint staging directories under `root` (the temp directory) whose process
    is no longer running, and returns them. A directory of a running process, of another user's,
    or named otherwise is left alone."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not (entry.name.startswith(STAGING_PREFIX) and pid.isdigit() and entry.is_dir(follow_symlinks=False)):
            continue
        if _process_running(int(pid)) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


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
