"""Run storage given as a URI (s3://, gs://, file://...): kept as a URI, read and written through
pyarrow.fs. The buckets are out of reach here; file:// URIs run the same code on local disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import CONFIGS, REPO
from yxanul_ray.checkpoint import TrainState, checkpoint_path, load_state, save_checkpoint
from yxanul_ray.config import load_job
from yxanul_ray.preflight import absolute_paths, check_storage, prepare_demo_corpus
from yxanul_ray.specs import ConfigError
from yxanul_ray.storage import StorageError, artifacts_dir, local_copy, resolve_storage, storage_join, upload

DEMO = os.path.join(CONFIGS, "demo.yaml")


def test_uris_are_kept_and_joined_before_their_options():
    assert resolve_storage("s3://bucket/runs") == "s3://bucket/runs"
    assert resolve_storage("runs") == os.path.abspath("runs")
    assert storage_join("s3://bucket/runs/", "r1", "checkpoint_1") == "s3://bucket/runs/r1/checkpoint_1"
    assert storage_join("s3://b/runs?endpoint_override=127.0.0.1:9000&scheme=http", "r1") == \
        "s3://b/runs/r1?endpoint_override=127.0.0.1:9000&scheme=http"
    # Not os.path.abspath's '/cwd/s3:/bucket/runs', a local directory that looked like a bucket.
    job = absolute_paths(load_job(DEMO, ["run.storage_path=s3://bucket/runs"]))
    assert job.run.storage_path == "s3://bucket/runs"
    assert artifacts_dir("/runs/r1") == "/runs/r1"
    assert artifacts_dir("s3://bucket/runs/r1?region=x").endswith(os.path.join("yxanul-artifacts", "r1"))


def test_a_checkpoint_at_a_uri_is_read_and_resumed_from(tmp_path):
    prepare_demo_corpus(DEMO, [])
    written = tmp_path / "written"
    save_checkpoint(str(written), {"w": torch.ones(2)}, {}, TrainState(step=9, stage=2, step_in_stage=1),
                    absolute_paths(load_job(DEMO)).to_dict())
    uri = f"file://{tmp_path}/bucket/run/checkpoint_000001"
    upload(str(written), uri)
    state, job = load_state(uri)
    assert (state.step, state.stage) == (9, 2) and job["model"]["preset"] == "demo"
    with local_copy(uri) as path:
        assert sorted(os.listdir(path)) == ["job.json", "model.pt", "optimizer.pt", "rng.pt", "state.json"]
    with pytest.raises(FileNotFoundError, match=r"is not a yxanul-ray checkpoint \(missing state.json\)"):
        load_state(f"file://{tmp_path}/bucket/run")
    # --resume given the run's directory at the URI: refused, naming its checkpoint (the latest).
    with pytest.raises(ConfigError, match=rf"fix: pass one of the 1 checkpoints in it, the latest: --resume {uri}$"):
        checkpoint_path(f"file://{tmp_path}/bucket/run")
    assert checkpoint_path(uri) == uri
    # --resume URI without --config: the checkpoint's own job.json, read from the URI; a
    # conflicting --set is refused before any cluster work, naming that file.
    proc = subprocess.run([sys.executable, "jobs/train.py", "--set", "model.overrides.d_model=96", "--resume", uri],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{uri}/job.json: cannot resume {uri} (stage 3, 1 steps in)" in proc.stderr
    assert "Ray instance" not in proc.stdout + proc.stderr


MULTI_NODE = """
import sys
from yxanul_ray.raycluster import local_ray_env
local_ray_env()
import ray
from ray.cluster_utils import Cluster
from yxanul_ray.config import load_job
from yxanul_ray.launch import warn_of_node_local_paths
from yxanul_ray.preflight import absolute_paths
demo = absolute_paths(load_job("configs/demo.yaml"))  # local sources, storage in ./runs
hub = load_job("configs/yxanul_270m_progressive_curriculum.yaml", ["run.storage_path=s3://bucket/runs"])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    ray.init(address=cluster.address)
    warn_of_node_local_paths(ray, demo)  # one node: nothing to say
    print("--- GPU workers, none here", flush=True)
    warn_of_node_local_paths(ray, absolute_paths(load_job("configs/demo.yaml", ["run.use_gpu=true"])))
    print("--- two nodes", flush=True)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    warn_of_node_local_paths(ray, demo)
    warn_of_node_local_paths(ray, hub)  # a bucket and Hub sources: nothing to say
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.ray
def test_node_local_paths_on_several_nodes_are_warned_of():
    """Two raylets on this machine stand in for a head and a GPU node (a cluster of its own, in a
    subprocess, beside the test session's)."""
    prepare_demo_corpus(DEMO, [])
    proc = subprocess.run([sys.executable, "-c", MULTI_NODE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("warning:", "---"))]
    gpu, two = lines.index("--- GPU workers, none here"), lines.index("--- two nodes")
    assert gpu == 0 and two == 5 and len(lines) == 10, lines
    for first, why in ((gpu + 1, "the train workers need GPUs and this node has none"),
                       (two + 1, "the cluster has 2 nodes")):
        assert lines[first].startswith(f"warning: run.storage_path {os.path.join(REPO, 'runs')} is a directory and "
                                       f"{why}")
        assert [line.split()[1] for line in lines[first + 1:first + 4]] == [
            "sources.fineweb.path", "sources.math.path", "sources.code.path"]
        assert all(why in line for line in lines[first + 1:first + 4])


def test_a_source_at_a_uri_that_lists_no_file_is_refused_before_any_cluster_work(tmp_path):
    """A glob at a URI is listed by the driver, as a local glob is checked by the config, before
    Ray starts. Before, the coordinator died in Ray on it, and Ray Train retried the worker group
    run.max_failures times, each a page of tracebacks, before the run failed."""
    prepare_demo_corpus(DEMO, [])
    missing = f"file://{tmp_path}/nowhere/*.parquet"
    proc = subprocess.run([sys.executable, "jobs/train.py", "--config", DEMO, "--set", f"sources.code.path={missing}",
                           "--set", f"run.storage_path={tmp_path / 'runs'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: source code: path {missing!r} matches no file; fix: sources.code.path, a glob that matches the "
        "source's files")
    assert "Ray instance" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_a_storage_directory_that_cannot_be_created_is_refused_before_any_cluster_work(tmp_path):
    """It failed inside Ray Train's controller before, a traceback after the cluster and the
    first stages' data had started (exit 1 after 16.7 s on the four-stage demo subset)."""
    (tmp_path / "a_file").write_text("")
    job = absolute_paths(load_job(DEMO, [f"run.storage_path={tmp_path}/a_file/runs"]))
    with pytest.raises(ConfigError, match=rf"demo.yaml: run.storage_path: {tmp_path}/a_file/runs cannot be created "
                                          r"\(Not a directory\); fix: a directory this user can create and write"):
        check_storage(job)
    check_storage(absolute_paths(load_job(DEMO, [f"run.storage_path={tmp_path}/new/runs"])))
    assert (tmp_path / "new" / "runs").is_dir()


def test_storage_that_cannot_be_opened_or_read_is_named_before_any_cluster_work(monkeypatch):
    proc = subprocess.run([sys.executable, "jobs/train.py", "--config", "configs/demo.yaml",
                           "--set", "run.storage_path=nosuchscheme://bucket/runs"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "run.storage_path: nosuchscheme://bucket/runs: not storage this machine can open" in proc.stderr
    assert "Ray instance" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    # An S3 endpoint that refuses connections (a closed local port), as a bucket out of reach.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = "s3://bucket/run/checkpoint_1?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(StorageError, match=r"s3://bucket/run/checkpoint_1/state.json\?endpoint_override=127.0.0.1:9"
                                           r"&scheme=http&region=us-east-1: cannot be read \(.*connect"):
        load_state(uri)
