"""The metric names the analysis reads, in one place (the experiments' rows: docs/experiments.md
and the docstrings of core/experiments/*.py; probe metric names: core/metrics/presets.py).

An experiment is recognised from its config keys. `DEFAULT_VALUE` is what `aggregate.py` reports
without --metric/--split/--layer/--at: the last value of the run's main loss.
"""

from __future__ import annotations

import pandas as pd

# experiment -> a config key only its config has
SIGNATURES = {
    "cloning": "clone_optimizer.name",
    "continual": "classes_per_task",
    "bitflip": "flip_period",
}

# experiment -> (split, layer, metric, at) of the default table
DEFAULT_VALUE = {
    "continual": ("val", "", "acc", "final"),  # accuracy on the last task's evaluation split
    "cloning": ("clone_train", "", "loss", "final"),  # the clone's training loss
    "bitflip": ("train", "", "loss", "final"),  # the last bin's prequential squared error
}

# splits of the loss/accuracy curves, per experiment
CURVE_SPLITS = {
    "continual": ("train", "val"),
    "cloning": ("base_train", "clone_train", "base_test", "clone_test"),
    "bitflip": ("train",),
}
CURVE_METRICS = ("loss", "acc")

# probe metrics drawn over training, per layer averaged over layers (core/metrics/presets.py);
# the first name a record holds is used (presets name the paper's duplicate metric differently)
UNIT_METRICS = {
    "effective rank": ("effective_rank",),
    "participation ratio": ("participation_ratio",),
    "duplicate fraction": ("duplicate_fraction", "duplicate_fraction_cosine"),
    "dead fraction": ("dead_fraction",),
}
UNIT_SPLIT = {"continual": "train", "cloning": "clone_train", "bitflip": "probe"}

CLONING_SCORE = ("clone_train", "", "r2_mean")  # mean of the layers' forward/backward R^2
MANIFOLD_DISTANCE = ("clone_train", "", "manifold_distance")
BITFLIP_SWITCH_METHOD = "sgd_then_cbp"  # the method whose switch Fig. B.1 shows

# config keys of the model and norm axes (continual and cloning)
MODEL_KEYS = ("model.arch", "model.norm")


def experiment_of(runs: pd.DataFrame) -> str:
    """The experiment whose runs `runs` holds; raises if none or several."""
    found = [
        name for name, key in SIGNATURES.items() if key in runs.columns and runs[key].notna().any()
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the experiment from the config keys (found {found or 'none'}); "
            "give --metric, --split and --layer explicitly"
        )
    return found[0]
