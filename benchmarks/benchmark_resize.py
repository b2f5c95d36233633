"""What a resize costs: an elastic run (`run.workers: [1, 2]`) on a Ray cluster of several nodes on
this machine (ray.cluster_utils.Cluster): a head that holds no train worker and two worker nodes
that hold one each. Mid-stage one worker node is removed (a preemption) and, once the group goes
on with one worker, added back. Prints, per resize, the seconds from the node leaving (or joining)
to the first step trained on the new group, and the steps trained again (those since the last
checkpoint); then one JSON line with the run's result and those figures. Each rank's rows per step
go to DIGESTS_DIR (tests/test_elastic.py checks them against an undisturbed run).

    python benchmarks/benchmark_resize.py CONFIG STORAGE DIGESTS_DIR

CONFIG needs `run.workers: [1, 2]` and `run.cpus_per_worker` above 1 (one worker per node).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time

from yxanul_ray.raycluster import local_ray_env

NODE_CPUS = 2.0
"""A worker node's CPUs: room for one train worker (run.cpus_per_worker 1.5) and a data task."""


def digest_lines(directory: str) -> list[dict]:
    lines = []
    for path in glob.glob(os.path.join(directory, "*.jsonl")):
        with open(path, encoding="utf-8") as f:
            lines += [json.loads(line) for line in f if line.endswith("\n")]
    return lines


def resize_costs(lines: list[dict], events: list[dict]) -> list[dict]:
    """Per resize: from and to how many workers, seconds from the event (a node removed, a node
    added) to the new group's first step, and the steps the new group trained that an earlier
    group had already trained."""
    first_seen: dict[tuple[int, int], float] = {}
    for d in sorted(lines, key=lambda d: d["at"]):
        first_seen.setdefault((d["stage"], d["step"]), d["at"])
    costs = []
    for event, old, new in (("removed", 2, 1), ("added", 1, 2)):
        at = next(e["at"] for e in events if e["event"] == event)
        after = sorted((d for d in lines if d["world"] == new and d["at"] > at and d["rank"] == 0),
                       key=lambda d: d["at"])
        if not after:
            continue
        again = {(d["stage"], d["step"]) for d in after if first_seen[(d["stage"], d["step"])] < after[0]["at"]}
        costs.append({"from": old, "to": new, "seconds": after[0]["at"] - at, "steps_again": len(again)})
    return costs


def wait_for(what: str, check, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.5)


def main(config: str, storage: str, digests: str) -> None:
    os.environ["YXANUL_STEP_DIGESTS"] = digests  # before the nodes start: their workers inherit it
    local_ray_env()
    import ray
    from ray.cluster_utils import Cluster

    from yxanul_ray.config import load_job
    from yxanul_ray.launch import start_and_fit
    from yxanul_ray.preflight import preflight

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    nodes = [cluster.add_node(num_cpus=NODE_CPUS, node_ip_address="127.0.0.1") for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=True)
    events: list[dict] = []
    try:
        job, listing, _ = preflight(load_job(config, [f"run.storage_path={storage}"]))
        outcome: dict = {}

        def fit() -> None:
            try:
                result = start_and_fit(job, listing, None, "elastic", os.path.join(storage, "elastic"), time.time())
                outcome.update(error=repr(result.error) if result.error else None, returned=result.return_value,
                               checkpoint=result.checkpoint.path if result.checkpoint else None)
            except BaseException as e:  # noqa: BLE001 - reported in the JSON line
                outcome.update(error=repr(e))

        runner = threading.Thread(target=fit)
        runner.start()
        # Preempted: a worker node leaves once the run is two steps into its second stage.
        wait_for("step 2 of stage 2 on two workers", lambda: any(
            d["stage"] == 1 and d["step"] >= 2 and d["world"] == 2 for d in digest_lines(digests)))
        cluster.remove_node(nodes[1], allow_graceful=False)
        events.append({"event": "removed", "at": time.time()})
        wait_for("the group going on with one worker", lambda: any(d["world"] == 1 for d in digest_lines(digests)))
        events.append({"event": "shrunk", "at": time.time()})
        cluster.add_node(num_cpus=NODE_CPUS, node_ip_address="127.0.0.1")
        events.append({"event": "added", "at": time.time()})
        wait_for("the group back on two workers", lambda: any(
            d["world"] == 2 and e["world"] == 1 for d in digest_lines(digests) for e in digest_lines(digests)
            if (d["stage"], d["step"]) > (e["stage"], e["step"])) or not runner.is_alive())
        events.append({"event": "grown", "at": time.time()})
        runner.join(timeout=900)
        costs = resize_costs(digest_lines(digests), events)
        for c in costs:
            print(f"resize {c['from']} -> {c['to']} workers: {c['seconds']:.1f} s from the node "
                  f"{'leaving' if c['to'] < c['from'] else 'joining'} to the first step on the new group; "
                  f"{c['steps_again']} step(s) trained again", flush=True)
        print(json.dumps({"outcome": outcome, "events": events, "resizes": costs}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
