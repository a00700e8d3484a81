"""The metric names and config keys the analysis reads, in one place (the experiments' rows:
docs/experiments.md and the docstrings of core/experiments/*.py; probe metric names:
core/metrics/presets.py).

A run's experiment is its record's "experiment" entry (the runs table's `experiment` column,
analysis.runs). `DEFAULT_VALUE` is what `aggregate` reports without --metric/--split/--layer/--at:
the last value of the run's main loss or accuracy.
"""

from __future__ import annotations

import pandas as pd

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

# the probe's diagnosis rows (probe.diagnose=true; core/metrics/partition.py), drawn per layer on
# UNIT_SPLIT: series name -> metric
DIAGNOSIS_METRICS = {"cloned": "cloned_fraction", "frozen": "frozen_fraction_all_rows"}

CLONING_SCORE = ("clone_train", "", "r2_mean")  # mean of the layers' forward/backward R^2
BITFLIP_SWITCH_METHOD = "sgd_then_cbp"  # the method whose switch Fig. B.1 shows

# bit-flip member config keys (core/experiments/bitflip.py): the method axis, the learner width,
# the SGD -> CBP switch step (None: half the steps) and the steps per member
BITFLIP_METHOD = "method"
BITFLIP_WIDTH = "width"
BITFLIP_SWITCH_STEP = "switch_step"
BITFLIP_STEPS = "steps"


def experiment_of(runs: pd.DataFrame) -> str:
    """The one experiment whose runs `runs` holds (the `experiment` column); raises if several."""
    found = sorted(runs["experiment"].dropna().unique())
    if len(found) != 1:
        raise ValueError(
            f"the runs hold {len(found)} experiments ({', '.join(found) or 'none'}); choose one "
            f"with --where experiment=NAME"
        )
    return str(found[0])
