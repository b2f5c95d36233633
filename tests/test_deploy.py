"""Deployment files: cluster.yaml against Ray's own cluster-config schema, the KubeRay RayJob's
structure, the runtime_env, and that none of them holds a secret or opens the dashboard."""

from __future__ import annotations

import json
import os
import re
import shlex

import jsonschema
import pytest
import yaml

from tests.helpers import REPO

CLUSTER = os.path.join(REPO, "cluster.yaml")
RAYJOB = os.path.join(REPO, "configs", "k8s", "rayjob.yaml")
RUNTIME_ENV = os.path.join(REPO, "configs", "runtime_env.yaml")
SECRET = re.compile(r"hf_[A-Za-z0-9]{20,}|HF_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9_]{8,}")


def load(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_validates_against_rays_schema():
    import ray.autoscaler

    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    cfg = load(CLUSTER)
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0  # a CPU head
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 8]
    assert gpu and all(t["min_workers"] == 0 for t in gpu)  # autoscaling 8-GPU workers from zero
    assert "pytorch" in cfg["docker"]["image"]  # an NVIDIA PyTorch image (ships Transformer Engine)
    assert any("requirements" in c for c in cfg["setup_commands"])


def test_cluster_dashboard_stays_on_loopback():
    cfg = load(CLUSTER)
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    text = open(CLUSTER).read()
    assert "0.0.0.0" not in text


def test_rayjob_has_what_kuberay_requires():
    job = load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"]
    config = argv[argv.index("--config") + 1]
    assert os.path.exists(os.path.join(REPO, config))
    # A head and GPU worker pods: checkpoints go to storage every pod reaches, not a pod's disk.
    assert "run.storage_path=s3://CHANGE/yxanul" in argv
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"][0]["image"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = cluster["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_rayjob_token_comes_from_a_secret():
    job = load(RAYJOB)
    containers = [job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        assert "value" not in env["HF_TOKEN"] and env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]


@pytest.mark.parametrize("path", [CLUSTER, RAYJOB, RUNTIME_ENV])
def test_no_secret_and_no_open_dashboard(path):
    text = open(path).read()
    assert not SECRET.search(text)
    assert "0.0.0.0" not in text


def test_runtime_env_is_plain_and_excludes_heavy_paths():
    env = load(RUNTIME_ENV)
    assert env["working_dir"] == "."
    assert {".venv", "data", "runs"} <= set(env["excludes"])
    assert "HF_TOKEN" not in env.get("env_vars", {})
