"""The one Tune trainable: a trial runs `core.experiments.<name>.run(cfg, sink)`.

The sink is the trial's run record (under `<sweep>/runs/<trial_id>/`), which also forwards every
logged scalar to `tune.report`, so that the Ray dashboard and the MLflow mirror see them. A trial
that is retried or resumed after an interruption finds its own record and continues from its last
checkpoint: run records, not Tune checkpoints, carry the state.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import torch
from ray import tune

from core.experiments.overrides import apply_overrides
from core.records import RunRecord
from sweeps.studies import get_study


class TuneRecord(RunRecord):
    """A run record that also reports each logged scalar to Tune as `<split>/<key>`."""

    def log(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
        super().log(step, values, split)
        tune.report({"step": step, **{f"{split}/{k}": float(v) for k, v in values.items()}})


def run_trial(config: dict, *, study: str, sweep_dir: str) -> None:
    """Tune's entry point for one trial of `study`."""
    experiment = importlib.import_module(f"core.experiments.{get_study(study).EXPERIMENT}")
    cfg = apply_overrides(experiment.Config, config)
    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    record = TuneRecord(Path(sweep_dir) / "runs" / context.get_trial_id())
    experiment.run(cfg, record)
