"""A run that ends before its target: stopped by the user or failed for good. The driver then
says where the run can go on from (its latest whole checkpoint) and the command that does it,
instead of leaving the user to search the storage for checkpoint_<time> directories.

Ctrl-C reaches the driver as SIGINT: Ray Train's handler aborts the run's controller and
`fit()` exits (SystemExit). `ray job stop` and schedulers send SIGTERM, which would end Python
at once, with nothing said (and Ray's own handler, which ray.init installs, exits as silently);
from Ray's start on it raises KeyboardInterrupt instead (`sigterm_interrupts`, put back after
ray.init by `reclaim_sigterm`), so the driver can say the same in the seconds before a SIGKILL
follows (`ray job stop` waits 3 s). A run stopped before its first checkpoint is sent back to
the checkpoint it resumed with, if any. The train workers and the coordinator go with the
driver that owns them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[dict]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (Ray's blocking
    calls pass it on) and the yielded dict records {"signal": "SIGTERM"}. A no-op off the main
    thread, where Python cannot set handlers."""
    received: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum, frame):
        received["signal"] = "SIGTERM"
        raise KeyboardInterrupt

    global _handler
    previous, outer = signal.signal(signal.SIGTERM, on_sigterm), _handler
    _handler = on_sigterm
    try:
        yield received
    finally:
        _handler = outer
        signal.signal(signal.SIGTERM, previous)


_handler = None
"""The handler of the innermost sigterm_interrupts block, while one is open."""


def reclaim_sigterm() -> None:
    """Put the open sigterm_interrupts block's handler back: ray.init installs its own (which
    exits with SystemExit(15) and says nothing). A no-op outside such a block."""
    if _handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)


def stop_signal(received: dict, stop: BaseException) -> str:
    """How a run was stopped: "SIGTERM" (ours, or Ray's own handler's SystemExit(15) before ours
    was put back), else "interrupted" (Ctrl-C)."""
    if received.get("signal") == "SIGTERM" or (isinstance(stop, SystemExit) and stop.code == signal.SIGTERM):
        return "SIGTERM"
    return "interrupted"


def resume_hint(run_dir: str, stages: int, target_tokens: int, resumed_from: str | None = None) -> str:
    """Where the run can go on from: its latest whole checkpoint (stage and tokens) and the
    command, or, where it wrote none, the checkpoint it was resumed from (`resumed_from`) or a
    new start. Never raises: it is the run's last word."""
    from yxanul_ray.checkpoint import latest_checkpoint, load_state

    try:
        latest = latest_checkpoint(run_dir)
        state = load_state(latest)[0] if latest else None
    except (OSError, ValueError, RuntimeError) as e:  # storage that cannot be listed or read now (StorageError)
        return (f"its checkpoints are under {run_dir} (not read now: {e}); go on from the latest checkpoint_* in it "
                "with: python jobs/train.py --resume")
    if latest is None and resumed_from:
        return (f"no checkpoint was written under {run_dir}; go on again from the one this run resumed with: "
                f"python jobs/train.py --resume {resumed_from}")
    if latest is None:
        return f"no checkpoint was written under {run_dir}; a new run starts from the beginning"
    if state.stage >= stages:  # stopped while it wrote its last artifacts
        return f"the run had trained its target: the final checkpoint is {latest} ({state.tokens:,} tokens)"
    return (f"the latest checkpoint is {latest} (stage {state.stage + 1}/{stages}, {state.step_in_stage} steps in, "
            f"{state.tokens:,}/{target_tokens:,} tokens); go on from it with: "
            f"python jobs/train.py --resume {latest}")
