"""Where a run's CPU goes, by Ray process kind (a diagnostic, not a test).

Runs a command (by default the demo curriculum) and samples /proc every 0.5 s, charging each
process's CPU time to its kind: train workers, Ray Data's split coordinators, packers and
tokenizer tasks, worker processes still starting (default_worker.py, then `ray::IDLE`), raylet,
dashboard, driver. On a small machine this shows how much of the cores the training itself gets,
how many processes of each kind were started (a process is counted under every kind it was seen
as: a worker starts as default_worker.py, names itself `ray::IDLE` and becomes a packer or a
tokenizer task), and the peak PSS of the processes the run started (sampled every 5 s). (A
process that ends between two samples loses its last half second.)

    python benchmarks/profile_cpu_by_process.py [-- COMMAND ...]
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

from procfs import pss_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
DAEMONS = ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py")


def process_kind(cmdline: str) -> str:
    if cmdline.startswith("ray::"):
        return cmdline.split()[0][:48]
    # Matched on the program, the command line up to its first long option, not on the options:
    # the raylet's carry the worker's command (default_worker.py) and a starting worker's name the
    # raylet's socket (--raylet-name), so a match anywhere charged the one to the other.
    program = cmdline.split(" --", 1)[0]
    if "default_worker.py" in program:  # a worker until it names itself (`ray::IDLE`)
        return "Ray worker, starting (not yet named)"
    for name in DAEMONS:
        if name in program:
            return name
    if "jobs/train.py" in program:
        return "driver"
    return "other: " + os.path.basename(cmdline.split()[0]) if cmdline else "kernel threads"


def cpu_ticks() -> dict[str, tuple[int, str]]:
    """{pid: (user+system ticks, kind)} of every process now alive."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12]), process_kind(cmdline))
    return out


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else [
        sys.executable, "jobs/train.py", "--config", "configs/demo.yaml"]
    before = {pid: ticks for pid, (ticks, _) in cpu_ticks().items()}  # CPU spent before we started
    last: dict[str, int] = {}
    by_kind: collections.Counter = collections.Counter()
    pids_by_kind: dict[str, set[str]] = collections.defaultdict(set)
    last_kind: dict[str, str] = {}
    peak_pss, peak_alive, samples = 0, 0, 0
    log_path = os.path.join(REPO, "runs", "profile_cpu_by_process.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            started = []  # alive now, started since we began
            for pid, (ticks, kind) in cpu_ticks().items():
                by_kind[kind] += ticks - last.get(pid, before.get(pid, 0))
                if pid not in before:
                    started.append(pid)
                    pids_by_kind[kind].add(pid)
                    last_kind[pid] = kind
                last[pid] = ticks
            peak_alive = max(peak_alive, len(started))
            # PSS every 5 s only: reading every process's smaps_rollup each half second cost the
            # sampler itself ~90 CPU-s of a ten-stage demo, on the cores it was measuring.
            if samples % 10 == 0:
                peak_pss = max(peak_pss, sum(pss_bytes(pid) for pid in started))
            samples += 1
            time.sleep(0.5)
    wall_s = time.perf_counter() - start
    total_s = sum(by_kind.values()) / TICKS_PER_S
    cores = os.cpu_count() or 1
    print(f"{' '.join(command)}: exit {proc.returncode}, {wall_s:.0f} s wall, {total_s:.0f} CPU-s used of "
          f"{cores * wall_s:.0f} available on {cores} cores (output: {log_path})")
    print(f"peak memory of the run's processes: {peak_pss / 2**30:.2f} GiB PSS, {peak_alive} alive at once")
    print(f"{len(last_kind)} processes started; by what each last ran: " + ", ".join(
        f"{n} {kind}" for kind, n in collections.Counter(last_kind.values()).most_common(12)))
    for kind, ticks in by_kind.most_common(20):
        print(f"  {ticks / TICKS_PER_S:8.1f} CPU-s {100 * ticks / TICKS_PER_S / max(total_s, 1e-9):5.1f}%  "
              f"{len(pids_by_kind[kind]):4d} processes  {kind}")


if __name__ == "__main__":
    main()
