"""The one Tune trainable: a trial runs one grid point, `experiment.run(cfg, sink)`.

Tune's config of a trial is `{"point": <point id>}` (sweeps.configs.point_id); the point's values
come from the sweep's plan. The sink is the point's run record `<sweep>/runs/<point id>/`, so a
trial that is retried, or run again by a later driver, finds its own record and continues from its
last checkpoint: run records, not Tune checkpoints, carry the state, and Tune's trial ids do not
matter.

Tune sees little: at most one report per `report_interval_s` per trial (the step and the last
values of the headline split, for the status table), and one at the end. Every row goes to the
Parquet record only; the MLflow mirror reads the records (sweeps.mirror).

Errors that a retry cannot fix (a bad config value, missing data, a corrupt input file:
`DETERMINISTIC_ERRORS`) end the trial at once, the record marked failed with `retryable: false`;
Tune never sees them as errors, so it does not retry them. Any other error (a killed worker, CUDA
out of memory, a transient I/O error) propagates and Tune retries the trial (FailureConfig).
"""

from __future__ import annotations

import importlib
import pickle
import time
import traceback
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from core.run.record import RunRecord

# Errors that fail the same way on every attempt (pyarrow's ArrowInvalid is a ValueError).
DETERMINISTIC_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)
RUNS_DIR = "runs"


def point_dir(sweep_dir: str | Path, point: str) -> Path:
    """The run record of grid point `point`."""
    return Path(sweep_dir) / RUNS_DIR / point


class TuneRecord(RunRecord):
    """A run record that reports to Tune at most once per `interval_s` (and never blocks on it
    otherwise): the step and the newest scalars of the split being logged."""

    def __init__(self, run_dir: Path, interval_s: float) -> None:
        super().__init__(run_dir)
        self.interval_s = interval_s
        self._last_report = float("-inf")

    def log(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
        super().log(step, values, split)
        now = time.monotonic()
        if now - self._last_report >= self.interval_s:
            self._last_report = now
            scalars = {f"{split}/{k}": float(v) for k, v in values.items() if "/" not in k}
            tune.report({"step": int(step), **scalars})


def experiment_of(study: Any) -> Any:
    """The module whose `Config` and `run(cfg, sink)` a study's trials use."""
    return importlib.import_module(
        getattr(study, "EXPERIMENT_MODULE", f"core.experiments.{study.EXPERIMENT}")
    )


TRIAL_CLASS = "SweepTrial"  # the trial actors' class (process title `ray::SweepTrial...`)


def trial_name(study: str, point: str, values: Mapping[str, Any], axes: list[str]) -> str:
    """A trial actor's readable name: `<sweep> <point id> <axis>=<value> ...`."""
    return " ".join([study, point, *(f"{k}={values.get(k)}" for k in axes)])


def named_trainable(function: Any, *, study: str, points: Mapping[str, dict], axes: list[str]):
    """Tune's class for the trial function `function`, whose actors carry a readable name: the
    dashboard and Ray's state API (`list_actors(detail=True)`, field `repr_name`) show each
    trial actor's `trial_name` instead of Tune's anonymous `ImplicitFunc`. Ray takes the name
    from the actor's `__repr__` once, when the actor is created: one actor per trial (no
    actor reuse) keeps it true."""
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(function)

    def __repr__(self) -> str:
        point = self.config["point"]
        return trial_name(study, point, points[point], axes)

    return type(TRIAL_CLASS, (base,), {"__repr__": __repr__, "__module__": __name__})


def run_trial(
    config: dict,
    *,
    study_module: str,
    sweep_dir: str,
    points: Mapping[str, dict],
    report_interval_s: float,
) -> None:
    """Tune's entry point for one trial: the grid point `config["point"]`."""
    import torch

    from core.run.config import apply_overrides

    point = config["point"]
    experiment = experiment_of(importlib.import_module(study_module))
    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    record = TuneRecord(point_dir(sweep_dir, point), report_interval_s)
    try:
        cfg = apply_overrides(experiment.Config, points[point])
        experiment.run(cfg, record)
    except DETERMINISTIC_ERRORS as err:
        record.set_status(
            "failed",
            f"{type(err).__name__}: {err}",
            retryable=False,
            traceback=traceback.format_exc(limit=8),
        )
