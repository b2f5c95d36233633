"""`run.tracker`: rank 0 writes the config, the log intervals' metrics, validation, the loss plot
and the final checkpoint's path to MLflow (a local file store) or W&B (offline mode), configured
by the driver's own environment; one tracker run per run name; a tracker that fails is a warning,
not a failed run."""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import pytest

from tests.helpers import demo_subset
from tests.test_orchestration import load_demo
from yxanul_ray.config import load_job
from yxanul_ray.specs import ConfigError
from yxanul_ray.tracker import check_tracker, open_tracker, run_params, tracker_environment


def one_stage_run(tmp_path, tracker: str, run_name: str):
    from yxanul_ray.launch import start_and_fit
    from yxanul_ray.preflight import preflight

    load_demo()
    config = demo_subset(str(tmp_path / f"{tracker}.yaml"), 3, 4, scale=0.25, tracker=tracker, log_every_steps=1)
    job, listing, _ = preflight(load_job(config, [f"run.storage_path={tmp_path / 'runs'}"]))
    run_dir = str(tmp_path / "runs" / run_name)
    result = start_and_fit(job, listing, None, run_name, run_dir, time.time())
    assert result.error is None and result.return_value is None, result.error
    return job, run_dir, result


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_mlflow_gets_the_config_metrics_validation_plot_and_final_checkpoint(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for the opt-in
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "curricula")
    job, run_dir, result = one_stage_run(tmp_path, "mlflow", "tracked")
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("curricula").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["curriculum.target_tokens"] == "4000" and run.data.params["run.tracker"] == "mlflow"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 2 and [m.step for m in history] == sorted(m.step for m in history)
    assert all(f"val/{s}" in run.data.metrics for s in job.sources)
    final = run.data.tags["final_checkpoint"]
    assert final == os.path.join(run_dir, os.path.basename(result.checkpoint.path))
    assert json.load(open(os.path.join(final, "state.json")))["tokens"] == 4_000
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "loss.png"} <= artifacts
    # The same run name again (a resubmission): it goes on in the tracker run it began.
    one_stage_run(tmp_path, "mlflow", "tracked")
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run.info.run_id]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_wandb_offline_gets_the_run_under_its_stable_id(tmp_path, monkeypatch):
    """W&B's offline run directory is named by the run's id (its name), and its record file holds
    the metrics' names, the validation, the final checkpoint's path; the loss plot is its image."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    job, run_dir, result = one_stage_run(tmp_path, "wandb", "tracked-wb")
    (offline,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*-tracked-wb"))
    records = open(os.path.join(offline, "run-tracked-wb.wandb"), "rb").read()
    final = os.path.join(run_dir, os.path.basename(result.checkpoint.path))
    for expected in ("train/loss", "train/tokens_per_s", *(f"val/{s}" for s in job.sources), "final_checkpoint",
                     final, "curriculum"):
        assert expected.encode() in records, expected
    assert glob.glob(os.path.join(offline, "files", "media", "images", "loss_*.png"))


def test_a_tracker_is_checked_before_the_run_and_its_failure_is_a_warning(tmp_path, monkeypatch, capsys):
    from yxanul_ray.config import job_from_dict

    raw = {"sources": {"a": {"path": str(tmp_path / "*.parquet")}},
           "curriculum": {"target_tokens": 64, "stages": [{"name": "s", "seq_len": 8, "tokens": 64, "batch_size": 8,
                                                            "mix": {"a": 1.0}}]},
           "run": {"tracker": "tensorboard"}}
    with pytest.raises(ConfigError, match=r"run.tracker: 'tensorboard' is not one of none, mlflow, wandb"):
        job_from_dict(raw, "job.yaml", check_files=False)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as where it is not installed
    with pytest.raises(ConfigError, match=r"run.tracker: wandb is not installed; fix: pip install wandb"):
        check_tracker("wandb")
    check_tracker("none")
    # The driver's variables travel to rank 0 redacted: an API key never prints.
    env = tracker_environment("wandb", {"WANDB_API_KEY": "secret-key", "WANDB_MODE": "offline", "HOME": "/h"})
    assert env.value == {"WANDB_API_KEY": "secret-key", "WANDB_MODE": "offline"} and "secret" not in repr(env)
    # An unreachable tracking server: one warning, then nothing more is tracked.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = open_tracker("mlflow", "r", {}, tracker_environment("mlflow", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}))
    tracker.scalars({"train/loss": 1.0}, 10)
    tracker.close("/runs/r/checkpoint_1")
    out = capsys.readouterr().out
    assert out.count("warning: run.tracker mlflow failed") == 1 and "the run goes on without it" in out


def test_the_config_s_settings_are_flat_parameters():
    params = run_params({"run": {"name": "x", "workers": 2, "storage_path": None}, "model": {"preset": "tiny",
                                                                                             "overrides": {"a": 1}},
                         "curriculum": {"target_tokens": 10, "stages": [{}, {}]}, "sources": {"a": {}, "b": {}}})
    assert params == {"run.name": "x", "run.workers": "2", "run.storage_path": "None", "model.preset": "tiny",
                      "curriculum.target_tokens": "10", "curriculum.stages": "2", "sources": "a,b"}
