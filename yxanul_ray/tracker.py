"""An experiment tracker beside TensorBoard (`run.tracker: none | mlflow | wandb`), written by
rank 0: the config, each log interval's metrics, each validation, the loss plot and the final
checkpoint's path. One tracker run per run name, so a restarted or resubmitted run (the same
stable name) goes on in the run it began instead of starting another.

Both trackers are configured as their users expect, through their own environment variables
(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME; WANDB_PROJECT, WANDB_MODE, WANDB_API_KEY, ...).
The driver hands its variables to rank 0 (tracker_environment): a cluster's nodes have their own
environments, and the run is configured where it is started. They travel redacted: an API key
never prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from yxanul_ray.hub import Redacted

TRACKERS = ("none", "mlflow", "wandb")
PACKAGES = {"mlflow": "mlflow-skinny", "wandb": "wandb"}
"""The install each tracker needs (`pip install yxanul-ray[tracking]` brings both)."""
ENV_PREFIXES = {"mlflow": ("MLFLOW_",), "wandb": ("WANDB_",)}
DEFAULT_PROJECT = "yxanul-ray"
"""The MLflow experiment or W&B project where its own variable names none."""
RUN_TAG = "yxanul.run"


def check_tracker(kind: str) -> None:
    """Refuse a tracker that is not installed here, before any cluster work (the workers need it
    too: one image for driver and workers is the usual set-up). Raises ConfigError with the fix."""
    from yxanul_ray.specs import ConfigError

    if kind == "none":
        return
    try:
        __import__(kind)
    except ImportError:
        raise ConfigError(f"run.tracker: {kind} is not installed; fix: pip install {PACKAGES[kind]} (or "
                          "yxanul-ray[tracking]) on the driver and the workers, or run.tracker: none") from None


def tracker_environment(kind: str, env: Mapping[str, str] = os.environ) -> Redacted:
    """The driver's variables for `kind` (MLFLOW_*, WANDB_*), redacted for the trip to rank 0."""
    prefixes = ENV_PREFIXES.get(kind, ())
    return Redacted({k: v for k, v in env.items() if k.startswith(prefixes)} if prefixes else {})


class Tracker:
    """No tracker: every call does nothing (run.tracker: none, and ranks other than 0)."""

    def scalars(self, values: Mapping[str, float], tokens: int) -> None:
        """Metrics at a point of the run, counted in trained tokens (TensorBoard's x axis too)."""

    def artifact(self, path: str) -> None:
        """A file of the run (the loss plot)."""

    def close(self, final_checkpoint: str | None) -> None:
        """The run's end: its final checkpoint's path, then the tracker run finished."""


class MlflowTracker(Tracker):
    def __init__(self, run_name: str, config: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT)
        earlier = mlflow.search_runs(filter_string=f"tags.`{RUN_TAG}` = '{run_name}'", output_format="list",
                                     max_results=1)
        self.run = mlflow.start_run(run_id=earlier[0].info.run_id if earlier else None,
                                    run_name=None if earlier else run_name, tags={RUN_TAG: run_name})
        if not earlier:
            mlflow.log_params(run_params(config))
            mlflow.log_dict(config, "config.json")

    def scalars(self, values: Mapping[str, float], tokens: int) -> None:
        self.mlflow.log_metrics({_mlflow_key(k): float(v) for k, v in values.items()}, step=tokens)

    def artifact(self, path: str) -> None:
        self.mlflow.log_artifact(path)

    def close(self, final_checkpoint: str | None) -> None:
        if final_checkpoint:
            self.mlflow.set_tag("final_checkpoint", final_checkpoint)
        self.mlflow.end_run()


class WandbTracker(Tracker):
    def __init__(self, run_name: str, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, id=_wandb_id(run_name),
                              name=run_name, resume="allow", config=config)
        self.run.define_metric("tokens")
        self.run.define_metric("*", step_metric="tokens")

    def scalars(self, values: Mapping[str, float], tokens: int) -> None:
        self.run.log({**values, "tokens": tokens})

    def artifact(self, path: str) -> None:
        self.run.log({os.path.splitext(os.path.basename(path))[0]: self.wandb.Image(path)})

    def close(self, final_checkpoint: str | None) -> None:
        if final_checkpoint:
            self.run.summary["final_checkpoint"] = final_checkpoint
        self.run.finish()


class Guarded(Tracker):
    """A tracker whose failure (its server unreachable, a full disk) is a warning, once, and no
    more tracking: the run's checkpoints, TensorBoard log and loss plot are written regardless,
    and a restart would not bring the tracker back."""

    def __init__(self, kind: str, make):
        self.kind, self.inner = kind, None
        self._call(lambda: setattr(self, "inner", make()))

    def _call(self, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any tracker failure: training goes on without it
            if self.kind is not None:
                first = str(e).splitlines()[0] if str(e) else ""
                print(f"warning: run.tracker {self.kind} failed ({type(e).__name__}: {first}); the run goes on "
                      "without it (TensorBoard and the loss plot are in the run's directory)", flush=True)
            self.kind, self.inner = None, None

    def scalars(self, values: Mapping[str, float], tokens: int) -> None:
        if self.inner is not None:
            self._call(lambda: self.inner.scalars(values, tokens))

    def artifact(self, path: str) -> None:
        if self.inner is not None:
            self._call(lambda: self.inner.artifact(path))

    def close(self, final_checkpoint: str | None) -> None:
        if self.inner is not None:
            self._call(lambda: self.inner.close(final_checkpoint))


def open_tracker(kind: str, run_name: str, config: dict, env: Redacted | None) -> Tracker:
    """Rank 0's tracker for the run, configured by the driver's variables (`env`)."""
    if kind == "none":
        return Tracker()
    os.environ.update(env.value if env is not None and env.value else {})
    return Guarded(kind, lambda: (MlflowTracker if kind == "mlflow" else WandbTracker)(run_name, config))


def run_params(config: dict) -> dict[str, str]:
    """The config's scalar settings as flat `section.key` parameters (the stages and sources,
    lists and tables, are in config.json beside them)."""
    params = {}
    for section in ("run", "data", "model", "optimizer"):
        for key, value in (config.get(section) or {}).items():
            if value is None or isinstance(value, str | int | float | bool):
                params[f"{section}.{key}"] = str(value)
    cur = config.get("curriculum") or {}
    params["curriculum.target_tokens"] = str(cur.get("target_tokens"))
    params["curriculum.stages"] = str(len(cur.get("stages") or []))
    params["sources"] = ",".join(config.get("sources") or {})
    return params


def _mlflow_key(key: str) -> str:
    return re.sub(r"[^\w\-./ ]", "_", key)


def _wandb_id(run_name: str) -> str:
    """A W&B run id from the run name (the name's own characters where W&B allows them)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:128]

