"""Connecting to Ray: an existing cluster when there is one, else a local one started here.

Ports stay on loopback and usage stats off unless the caller says otherwise: a training job
has no business opening a dashboard to the network by default.
"""

from __future__ import annotations

import logging
import os
import sys

WORKER_SOFT_LIMIT = 32

_started_here = False
"""Whether init_ray started this process's cluster (a local one) rather than joining one."""


def local_ray_env() -> None:
    """Environment for a Ray started by this process (set before ray.init / ray start)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray 2.60 enables token authentication on new clusters (token in ~/.ray/auth_token); clients
    # such as `ray job submit` only send it in token mode. Keep the protection, and say so. Only
    # before Ray is imported: its core library reads the mode once, at import, so setting it
    # later makes this process's Python half say "token" while its core sends no token, and the
    # cluster it starts or joins refuses it (`check` did, before 'ray' moved after init_ray).
    # Left unset, ray.init settles the mode itself, consistently.
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Keeps every Ray port on 127.0.0.1 (Ray 2.60).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray keeps at most num_cpus idle worker processes and kills the rest after a second idle; the
    # per-stage actors (packers, split coordinators) count toward that, so on a small node the
    # pooled tokenizer/read workers were killed and restarted at ~1.2 CPU-s per start. Measured on
    # 2 cores, four demo stages: 60 worker processes started and 122-134 s wall by default, 43
    # and 98-102 s with this at 32 or 64 (benchmarks/profile_cpu_by_process.py). Large nodes (num_cpus
    # above it) keep their own, higher, default.
    os.environ.setdefault("RAY_num_workers_soft_limit", str(worker_soft_limit()))


def worker_soft_limit() -> int:
    """RAY_num_workers_soft_limit for a Ray this project starts (local_ray_env, CI's and the
    tests' `ray start`): WORKER_SOFT_LIMIT, or the core count where that is higher."""
    return max(WORKER_SOFT_LIMIT, os.cpu_count() or 1)


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True,
             dashboard_host: str = "127.0.0.1"):
    """Join RAY_ADDRESS / `address` if given or a cluster is running, else start a local one."""
    # Before `import ray`: Ray reads these when it loads, and a driver that joins a loopback-only
    # cluster without them waits forever for a raylet on the machine's public address.
    local_ray_env()
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = job_runtime_env()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env, **_loopback(address))
        return ray
    running = running_cluster_address()
    if running:
        ray.init(address=running, log_to_driver=True, runtime_env=runtime_env, **_loopback(running))
    else:
        global _started_here
        # "local": a new cluster. Without it ray.init joins the cluster its ray_current_cluster
        # file names, a file that outlives a head ended without `ray stop` (killed, or a `--block`
        # head's process ended), and fails on num_cpus ("When connecting to an existing cluster").
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                 _node_ip_address="127.0.0.1", log_to_driver=True, runtime_env=runtime_env)
        _started_here = True
        # A cluster started here is this one machine: there is no node to be preempted, so
        # Ray Train's preemption watcher (an actor process of its own, polling every 5 s) has
        # nothing to watch. Read when the trainer starts its controller.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return ray


def head_node_strategy(ray):
    """Where the run's control actors go (the coordinator, its packing actor, and through them
    the Ray Data machinery, Ray's autoscaling coordinator among it, which stays pinned to the
    node that first asks for it): the head node, which lives as long as the cluster, not a
    preemptible worker node. Hard, because Ray 2.60 places an actor that asks for no CPU on any
    node despite a soft affinity (tests/test_elastic.py), and a lost head ends the cluster
    anyway. Ray's own choice where no head is found."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})]
    return NodeAffinitySchedulingStrategy(heads[0], soft=False) if heads else "DEFAULT"


WORKER_SETUP_HOOK = "yxanul_ray.raycluster.set_up_worker_process"


def set_up_worker_process() -> None:
    """Run first in every Ray worker process of the job (its worker_process_setup_hook, which
    job_runtime_env sets): undo two things a worker can inherit from how its cluster was started."""
    interrupt_on_sigint()
    ask_own_cluster()


def interrupt_on_sigint() -> None:
    """SIGINT raises KeyboardInterrupt, as in a Python started from a terminal. Ray cancels a
    running task by raising SIGINT in its worker, but a process started with SIGINT ignored, as
    `cmd &` in a script starts it (a `ray start --head --block &`, CI's head, a run launched in the
    background), hands that on to the raylet and every worker. There a cancelled task ran on to its
    end, and one cancelled while its arguments loaded failed with "TypeError: 'Handlers' object is
    not callable" (Ray's deferred-SIGINT code calls the ignored handler), which Ray Data's read
    tasks printed as unhandled errors when a stage's pipeline stopped them."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def ask_own_cluster() -> None:
    """RAY_ADDRESS is the cluster this worker runs in. Ray's State API, asked with no address (as
    Ray Train's placement-group cleaner asks, every second, whether its controller lives), takes
    RAY_ADDRESS, else the cluster /tmp/ray/ray_current_cluster names: a file that a head ended
    without `ray stop` leaves behind (CI's, any killed `ray start --head --block`), naming a GCS
    that is gone. On a cluster started here, the cleaner's thread then died with a traceback in
    the run's output ("Timed out while waiting for GCS to become available"), or was still waiting
    when the run ended, and Ray Train waited 12 s for it."""
    if os.environ.get("RAY_ADDRESS"):
        return
    import ray

    try:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a hook that raises fails the worker's start: leave Ray's own lookup
        pass


def job_runtime_env() -> dict:
    """The runtime_env this process's ray.init gives the job: the worker setup above, unless a
    `ray job submit --runtime-env` already gave the job a worker_process_setup_hook (Ray refuses
    to merge two)."""
    import json

    submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    if "worker_process_setup_hook" in submitted:
        return {}
    return {"worker_process_setup_hook": WORKER_SETUP_HOOK}


def started_here() -> bool:
    """Whether this process's Ray cluster was started by init_ray here: this machine alone, with
    no autoscaler to add nodes (a joined cluster may have one)."""
    return _started_here


def _loopback(address: str) -> dict:
    """A cluster on this machine's loopback is joined from loopback too."""
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}


def running_cluster_address() -> str | None:
    """The address of a live `ray start` cluster on this machine, else None. Ray's own
    address="auto" trusts a leftover file and then waits ~30 s for a GCS that is gone."""
    import socket

    try:
        from yxanul_ray.ray_internals import ray_address_from_environment

        address = ray_address_from_environment()
    except Exception:  # noqa: BLE001 - no cluster file, or an unreadable one
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return address
    except (OSError, ValueError):
        return None


def quiet_ray_data() -> None:
    """No progress bars in logs (they are for terminals); metrics go to the dashboard instead.
    Ray Data's own INFO lines stay in the session's ray-data.log, off this process's console."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # The coordinator runs every source pipeline of every stage: each logged "registers for
    # logging while another dataset is also logging", "execution finished in ..." and "progress
    # bars disabled", 20 of a four-stage run's 113 lines around the progress lines. Warnings and
    # errors still reach the console; the file handler keeps every level.
    for handler in console_handlers("ray.data"):
        handler.setLevel(max(handler.level, logging.WARNING))
        # A warning, but about the setting just made on purpose: one line per process.
        handler.addFilter(DropConsoleLines("Progress bars disabled"))


def quiet_ray_train() -> None:
    """Off a train worker's console: Ray Train's echo of every report ("Reporting training result
    N: TrainingReport(...)"), one per rank per checkpoint, 20 of the demo's ~190 lines around the
    progress lines, repeating the metrics the stage banner already prints. Ray Train's session log
    files keep it; its other lines (checkpoint paths, failures and restarts) stay on the console."""
    for handler in console_handlers("ray.train"):
        handler.addFilter(DropConsoleLines("Reporting training result"))


def console_handlers(logger_name: str) -> list:
    """The handlers of a Ray library's logger that write to the console (Ray configures its
    libraries' loggers with their own handlers and no propagation); not its log files."""
    return [h for h in logging.getLogger(logger_name).handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


class DropConsoleLines:
    """A logging filter that drops records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def actor_was_restarted() -> bool:
    """Whether Ray restarted the calling actor after its process died. Ray 2.60's public property
    reads its own deprecated `actor_id` inside, which logged a RayDeprecationWarning in the
    user's log at every start."""
    import warnings

    import ray
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
