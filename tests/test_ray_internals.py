"""Ray's private and internal APIs this project calls (yxanul_ray/ray_internals.py) still exist
and behave as used, on the installed Ray: an upgrade that breaks one fails here, by name."""

from __future__ import annotations

import pytest

from yxanul_ray import ray_internals


def test_the_pinned_ray_is_the_installed_one():
    import ray

    assert ray.__version__.startswith("2.60."), f"ray {ray.__version__}: review yxanul_ray/ray_internals.py"


def test_the_address_lookup_takes_ray_address_first_and_else_a_cluster_file_or_raises(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    assert ray_internals.ray_address_from_environment() == "127.0.0.1:6380"
    monkeypatch.delenv("RAY_ADDRESS")
    try:
        found = ray_internals.ray_address_from_environment()
    except ConnectionError:  # no cluster named on this machine
        return
    host, _, port = found.rpartition(":")  # a running head's (CI's), from its cluster file
    assert host and port.isdigit(), found


@pytest.mark.ray
def test_map_tasks_know_their_index_and_datasets_give_their_blocks_by_reference(ray_cluster):
    import ray.data

    def index(batch):
        batch["task"] = [ray_internals.current_map_task_index()] * len(batch["id"])
        return batch

    ds = ray.data.range(8, override_num_blocks=4).map_batches(index, batch_size=None, batch_format="pandas")
    ds.context.execution_options.preserve_order = True
    tasks = [t for bundle in ray_internals.iter_ref_bundles(ds) for block in ray.get(list(bundle.block_refs))
             for t in block["task"].to_pylist()]
    assert sorted(set(tasks)) == [0, 1, 2, 3] and tasks == sorted(tasks)
    assert ray_internals.current_map_task_index() is None  # outside a task
