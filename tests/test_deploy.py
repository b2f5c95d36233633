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
NETWORK_POLICY = os.path.join(REPO, "configs", "k8s", "networkpolicy.yaml")
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
    assert head["serviceType"] == "ClusterIP"
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


@pytest.mark.parametrize("path", [CLUSTER, RAYJOB, RUNTIME_ENV, NETWORK_POLICY])
def test_no_secret_and_no_public_dashboard(path):
    text = open(path).read()
    assert not SECRET.search(text)
    settings = yaml.safe_dump(load(path))  # what the file sets, its comments aside
    assert not re.search(r"LoadBalancer|NodePort|kind:\s*Ingress|externalIPs|hostNetwork|hostPort", settings)
    if path != RAYJOB:  # the RayJob's head listens on the pod network, behind networkpolicy.yaml
        assert "0.0.0.0" not in text


def _pods(job: dict) -> dict[str, dict]:
    """The RayJob's pod templates by role: head, each worker group, KubeRay's submitter."""
    cluster = job["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"], "submitter": job["spec"]["submitterPodTemplate"]}
    pods.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return pods


def test_the_dashboard_is_reachable_inside_the_cluster_only_and_asks_for_the_token():
    """KubeRay's submitter pod reaches the head's 8265 over the pod network: the head listens
    there, its service is a ClusterIP, and the NetworkPolicy admits to the head only this job's
    pods (any port) and the operator's namespace (8265 only). Every pod that talks to the head
    sends Ray's token, from a Kubernetes secret."""
    job, policy = load(RAYJOB), load(NETWORK_POLICY)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    pods = _pods(job)
    part_of = {"app.kubernetes.io/part-of": "yxanul-curriculum"}
    for role, pod in pods.items():
        assert pod["metadata"]["labels"].items() >= part_of.items(), role
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", role
        assert "value" not in env["RAY_AUTH_TOKEN"] and env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"], role
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= pods["head"]["metadata"]["labels"].items()
    assert not any(selected.items() <= pods[r]["metadata"]["labels"].items() for r in pods if r != "head")
    own, operator = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": part_of}}]}
    assert [p["port"] for p in operator["ports"]] == [8265] and "namespaceSelector" in operator["from"][0]
    assert not any("ipBlock" in peer for rule in policy["spec"]["ingress"] for peer in rule["from"])


def test_runtime_env_is_plain_and_excludes_heavy_paths():
    env = load(RUNTIME_ENV)
    assert env["working_dir"] == "."
    assert {".venv", "data", "runs"} <= set(env["excludes"])
    assert "HF_TOKEN" not in env.get("env_vars", {})
