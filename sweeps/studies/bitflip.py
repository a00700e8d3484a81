"""Bit flipping: loss of plasticity under SGD, recovery by CBP, and the width study (paper §4,
§B.1.1, Figs. B.1-B.2; paper_spec §7.3).

    python -m sweeps run bitflip --scale paper           # 12 trials = 840 member runs
    make sweep-bitflip                                   # the smoke scale, then the aggregate

Each trial is one batched ensemble (`core.experiments.bitflip`): one learner width and one method,
with the 70 seeds 30-99 of the paper's grid as members, 5M online steps each. Methods: `sgd` (the
paper's 280 baseline runs: 4 widths x 70 seeds), `sgd_then_cbp` (SGD for the first 2.5M steps,
then CBP: Fig. B.1) and `cbp` (CBP throughout: with `sgd`, the width study of Fig. B.2). Trials:
4 widths {5, 10, 50, 100} x 3 methods = 12; member runs: 12 x 70 = 840. Cost: about 1.4
(SGD) to 3.3 (CBP) CPU-seconds per 5M-step member in a 256-member ensemble.
Expected: under SGD the binned loss rises again after its first fall and the hidden rank falls,
more so for wider learners; after the switch CBP brings both back. `smoke`: 20,000 steps, 2 widths
x 2 methods x 3 seeds.
"""

from __future__ import annotations

from ray import tune

EXPERIMENT = "bitflip"
SCALES = ("smoke", "paper")
PAPER_SEEDS = tuple(range(30, 100))  # the paper's grid: 70 seeds
METHODS = [("sgd",), ("sgd_then_cbp",), ("cbp",)]


def base_config() -> dict:
    return {
        "steps": 5_000_000,
        "lr": (0.01,),
        "seed": PAPER_SEEDS,
        "metrics_every": 10_000,
        "bin_size": 1000,
    }


def param_space(scale: str) -> dict:
    if scale == "smoke":
        return {
            "steps": 20_000,
            "metrics_every": 5_000,
            "checkpoint_every": 10_000,
            "width": tune.grid_search([5, 10]),
            "method": tune.grid_search(METHODS[:2]),
            "seed": (0, 1, 2),
        }
    return {
        "width": tune.grid_search([5, 10, 50, 100]),
        "method": tune.grid_search(METHODS),
    }


def members_per_trial(space: dict) -> int:
    """Member runs in each trial: its methods x learning rates x seeds."""
    return (
        len(space["lr"]) * len(space["seed"]) * max(len(m) for m in space["method"]["grid_search"])
    )


def resources(scale: str) -> dict:
    """One CPU per ensemble: the batched loop is fastest on one thread."""
    return {"cpu": 1}
