"""Checkpoint snapshots: a checkpoint's state copied to host memory at one moment, so training
goes on while another thread writes it, and the local staging directories Ray Train copies to
storage. Host buffers are kept from one snapshot to the next (`HostStaging`): copying into
memory already mapped is what keeps the copy cheap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

import torch

from yxanul_ray.checkpoint import TrainState, rng_state, write_checkpoint_files

log = logging.getLogger(__name__)

MODEL_PATH, OPTIMIZER_PATH = ("model",), ("optimizer",)
"""Where a snapshot's two state_dicts' buffers are kept in HostStaging."""


@dataclass
class CheckpointSnapshot:
    """Everything a checkpoint holds, copied to host memory at one moment. Written later, on
    another thread while training goes on, it is still that moment's state: the optimizer
    updates its tensors in place and the generators move on, so nothing here refers to them.
    The copy is the part training waits for; the write, seconds for a 270M model's weights and
    AdamW state, is not."""

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
        waits (pinning gigabytes takes seconds; copying into them later, a tenth of a second).
        Not beside training steps either: CUDA calls wait while pages are pinned."""
        staging.reserve_async([(model_state, MODEL_PATH), (optimizer_state, OPTIMIZER_PATH)])

    def write(self, path: str) -> None:
        write_checkpoint_files(path, self.model_state, self.optimizer_state, self.rng, self.state, self.job)


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
