"""Connecting to Ray: an existing cluster when there is one, else a local one started here.

Ports stay on loopback and usage stats off unless the caller says otherwise: a training job
has no business opening a dashboard to the network by default.
"""

from __future__ import annotations

import os


def local_ray_env() -> None:
    """Environment for a Ray started by this process (set before ray.init / ray start)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Keeps every Ray port on 127.0.0.1 (measured on Ray 2.60; see DESIGN.md).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True,
             dashboard_host: str = "127.0.0.1"):
    """Join RAY_ADDRESS / `address` if given or a cluster is running, else start a local one."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return ray
    local_ray_env()
    try:
        ray.init(address="auto", log_to_driver=True)
    except ConnectionError:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                 _node_ip_address="127.0.0.1", log_to_driver=True)
    return ray


def quiet_ray_data() -> None:
    """No progress bars in logs (they are for terminals); metrics go to the dashboard instead."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
