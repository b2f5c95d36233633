"""The run's gauges as users see them outside Ray: a real Prometheus, started with the scrape
config Ray writes into its session directory, scrapes a short run on a Ray head, and every
panel of the Grafana dashboard in configs/grafana/ finds that run's series by its `run` tag."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.helpers import REPO, demo_subset
from tests.test_orchestration import ANSI, load_demo
from yxanul_ray.raycluster import running_cluster_address

DASHBOARD = os.path.join(REPO, "configs", "grafana", "yxanul-ray-dashboard.json")
GAUGES = ("yxanul_global_tokens", "yxanul_stage", "yxanul_tokens_by_source", "yxanul_tokens_per_s", "yxanul_loss")
"""The coordinator's gauges (coordinator._Gauges); Ray exports each as ray_<name>."""


def panel_queries(run: str) -> dict[str, str]:
    """Each dashboard panel's title -> its PromQL with the dashboard's `run` variable set."""
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    return {p["title"]: t["expr"].replace("$run", run) for p in dashboard["panels"] for t in p["targets"]}


def test_the_dashboard_shows_every_gauge_by_run():
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["run"]["definition"] == "label_values(ray_yxanul_global_tokens, run)"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert sorted(e.split("{")[0] for e in exprs) == sorted(f"ray_{g}" for g in GAUGES)
    assert all('{run=~"$run"}' in e for e in exprs)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    coordinator = open(os.path.join(REPO, "yxanul_ray", "coordinator.py"), encoding="utf-8").read()
    assert all(f'Gauge("{g}"' in coordinator for g in GAUGES)


@pytest.fixture(scope="module")
def prometheus_binary():
    """Debian's `prometheus`, installed here where apt-get can (as root), else the test is skipped."""
    found = shutil.which("prometheus")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            subprocess.run(install, capture_output=True, env=env, timeout=600)
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip("Prometheus is not installed, and Debian's `prometheus` package could not be (apt-get as root)")
    return found


def head_session_dir(gcs: str) -> str:
    """The session directory of the head at `gcs` (host:port): the newest whose GCS port file
    names that port and which holds the scrape config that Ray's dashboard writes (a cluster
    started without a dashboard, as in-process test clusters are, writes none)."""
    port = gcs.rpartition(":")[2]
    written = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(p))))
               for p in glob.glob("/tmp/ray/session_*/metrics/prometheus/prometheus.yml")]
    ours = [s for s in written if any(pathlib.Path(f).read_text(encoding="utf-8").strip() == port
                                      for f in glob.glob(os.path.join(s, "gcs_server_port_*")))]
    assert ours, f"no Ray session of the head at {gcs} has a Prometheus scrape config"
    return max(ours, key=os.path.getmtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]["result"]


def scrape_state(base: str, session: str, log: str) -> str:
    """What Prometheus saw, for a failure: its targets and their health, every project series'
    labels, Ray's target list, and Prometheus's own log."""
    with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=10) as answer:
        active = json.load(answer)["data"]["activeTargets"]
    targets = [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in active]
    series = [s["metric"] for s in query(base, '{__name__=~"ray_yxanul_.*"}')]
    with open(os.path.join(session, "prom_metrics_service_discovery.json"), encoding="utf-8") as f:
        discovered = f.read()
    return f"targets {targets}\nseries {series[:20]}\nRay's targets {discovered}\nlog {log[-2000:]}"


@pytest.mark.timeout(900)
def test_prometheus_scrapes_the_run_s_gauges_with_its_run_tag(job_address, prometheus_binary, tmp_path):
    gcs = running_cluster_address()
    assert gcs, "the Ray head (job_address) is not running"
    session = head_session_dir(gcs)
    with open(os.path.join(session, "metrics", "prometheus", "prometheus.yml"), encoding="utf-8") as f:
        scrape = yaml.safe_load(f)
    assert scrape["scrape_configs"][0]["file_sd_configs"][0]["files"] == [
        os.path.join(session, "prom_metrics_service_discovery.json")]
    # Ray's config as it is: its 10-s interval is also each scrape's time limit, and a head that
    # has run many jobs serves tens of MB of Ray Data histograms per scrape (docs/cluster.md).
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape))
    base = f"http://127.0.0.1:{free_port()}"
    with open(tmp_path / "prometheus.log", "w") as log:
        prometheus = subprocess.Popen([prometheus_binary, f"--config.file={config}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address={base.removeprefix('http://')}"],
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        load_demo()
        job = demo_subset(str(tmp_path / "two_stages.yaml"), 3, 5, scale=0.25, log_every_steps=1)
        run = subprocess.run([sys.executable, "-m", "yxanul_ray", "train", job, "--set",
                              f"run.storage_path={tmp_path / 'runs'}"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "RAY_ADDRESS": gcs}, timeout=600)
        out = ANSI.sub("", run.stdout + run.stderr)
        assert run.returncode == 0, out[-4000:]
        name = re.search(r"^run (\S+): \d+ worker", out, re.MULTILINE).group(1)
        deadline = time.monotonic() + 90  # a scrape of the run's last values
        while True:
            tokens = query(base, f'max(last_over_time(ray_yxanul_global_tokens{{run="{name}"}}[15m]))')
            if (tokens and float(tokens[0]["value"][1]) == 11_500) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert tokens and float(tokens[0]["value"][1]) == 11_500, (
            name, tokens, scrape_state(base, session, (tmp_path / "prometheus.log").read_text()))
        for title, promql in panel_queries(name).items():
            series = query(base, f"last_over_time({promql}[15m])")  # each panel is one selector
            assert series and all(s["metric"]["run"] == name for s in series), title
        sources = {s["metric"]["source"] for s in query(
            base, f'last_over_time(ray_yxanul_tokens_by_source{{run="{name}"}}[15m])')}
        assert sources == {"fineweb", "math", "code"}
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
