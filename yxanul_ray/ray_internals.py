"""The Ray APIs this project uses that Ray marks private or internal, in one place. Ray says
these may change in any release; pyproject pins the Ray minor version they were written for,
and tests/test_ray_internals.py fails at once, naming the call, where an upgrade breaks one."""

from __future__ import annotations


def ray_address_from_environment() -> str:
    """The address Ray's `address="auto"` would take (RAY_ADDRESS, else the local cluster file);
    raises where there is none."""
    from ray._private.services import get_ray_address_from_environment

    return get_ray_address_from_environment("auto", None)


def current_map_task_index() -> int | None:
    """Inside a Ray Data map task: the task's index in its operator (its block's place in the
    stream, under preserve_order); None elsewhere."""
    from ray.data._internal.execution.interfaces.task_context import TaskContext

    task = TaskContext.get_current()
    return task.task_idx if task else None


def iter_ref_bundles(ds):
    """A Dataset's output blocks by reference (Dataset.iter_internal_ref_bundles, a developer
    API): dropping the iterator shuts the executor down without a forced cancel."""
    return ds.iter_internal_ref_bundles()
