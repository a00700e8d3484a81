"""MLflow mirror of a sweep, written from the Tune driver only (one writer, no SQLite locking).

One MLflow experiment per sweep, one MLflow run per trial: the flattened trial config as params,
every numeric result over steps as metrics, and tags study, scale, seed, git SHA and the run
record's final status. A trial that resumes after an interruption continues its MLflow run (found
by its `trial_id` tag) instead of opening a second one.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune.logger import LoggerCallback

# Keys Tune adds to every result that say nothing about the experiment.
_TUNE_BOOKKEEPING = {
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "pid",
    "training_iteration",
    "iterations_since_restore",
    "time_since_restore",
    "timesteps_since_restore",
    "done",
}


def tracking_uri(sweep_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else an SQLite file inside the sweep directory."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(sweep_dir).resolve()}/mlflow.db"
    )


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MLflowTracker(LoggerCallback):
    """Tune callback mirroring trials to MLflow; see the module docstring."""

    def __init__(self, sweep_dir: Path, study: str, scale: str, git_sha: str) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.tags = {"study": study, "scale": scale, "git_sha": git_sha}
        self.experiment_name = self.sweep_dir.resolve().name
        self._runs: dict[str, str] = {}
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            uri = tracking_uri(self.sweep_dir)
            mlflow.set_tracking_uri(uri)
            self._client = MlflowClient(tracking_uri=uri)
            found = self._client.get_experiment_by_name(self.experiment_name)
            self._experiment_id = (
                found.experiment_id
                if found is not None
                else self._client.create_experiment(self.experiment_name)
            )
        return self._client

    def _run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        client = self.client
        existing = client.search_runs(
            [self._experiment_id], filter_string=f"tags.trial_id = '{trial.trial_id}'"
        )
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            params = _flatten(dict(trial.config))
            tags = {**self.tags, "trial_id": trial.trial_id, "seed": str(params.get("seed", ""))}
            run = client.create_run(self._experiment_id, run_name=str(trial), tags=tags)
            run_id = run.info.run_id
            items = [Param(key, str(value)) for key, value in params.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                client.log_batch(run_id, params=items[start : start + 100])
        self._runs[trial.trial_id] = run_id
        return run_id

    def log_trial_start(self, trial) -> None:
        self._run_id(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        step = int(result.get("step", iteration))
        metrics = {
            key: float(value)
            for key, value in result.items()
            if key not in _TUNE_BOOKKEEPING
            and key != "step"
            and isinstance(value, numbers.Number)
            and not isinstance(value, bool)
        }
        if metrics:
            run_id = self._run_id(trial)
            now = int(time.time() * 1000)
            items = [Metric(key, value, now, step) for key, value in metrics.items()]
            for start in range(0, len(items), 1000):
                self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._run_id(trial)
        status_file = self.sweep_dir / "runs" / trial.trial_id / "status.json"
        status = "failed" if failed else "unknown"
        if status_file.exists():
            status = json.loads(status_file.read_text()).get("status", status)
        self.client.set_tag(run_id, "status", status)
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
