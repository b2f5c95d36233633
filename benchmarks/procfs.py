"""Facts about processes from /proc (Linux), for the benchmark and profiling scripts."""

from __future__ import annotations


def pss_bytes(pid: str | int) -> int:
    """Proportional set size of one process: pages shared with other processes (the object
    store's shared memory, libraries of forked workers) count in proportion, so a sum over
    processes counts them once. 0 for a process that is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
