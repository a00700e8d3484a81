"""Bit flipping: loss of plasticity under SGD, recovery by CBP, and the width study (paper §4,
§B.1.1, Figs. B.1-B.2), plus Dohare et al.'s slowly-changing-regression grid.

    python -m sweeps run bitflip --scale paper           # 4 trials = 840 member runs
    python -m sweeps run bitflip --scale dohare          # his BP grid: 12 trials = 3,600 runs
    python -m sweeps run bitflip --scale dohare_cbp      # his CBP grid: 5 trials = 500 runs
    make sweep-bitflip                                   # the smoke scale, then the aggregate

Each trial is one batched ensemble (`core.experiments.bitflip`). `paper`: one learner width per
trial, with the three methods x the 70 seeds 30-99 of the paper's grid as its 210 members, 5M
online steps each, on the default target (`threshold=code`, the paper's script), run by the
compiled loop (`engine=native`). Methods: `sgd` (the paper's 280 baseline runs: 4 widths x 70
seeds), `sgd_then_cbp` (SGD for the first 2.5M steps, then CBP: Fig. B.1) and `cbp` (CBP
throughout: with `sgd`, the width study of Fig. B.2). Trials: 4 widths, widest first (two run at
once on two cores, so the longest starts first); member runs: 4 x 210 = 840, each with its own
record `members/<method>-lr0.01-seed<seed>/` (loss every 1,000 steps, the probe every 50,000:
at every 10,000 it would cost more than the training itself). Cost: `python -m sweeps plan
bitflip --scale paper` (sweeps/costs.json, from `python benchmarks/bench_bitflip.py --costs`).
Expected:
under SGD the binned loss rises again after its first fall and the hidden rank falls, more so
for wider learners; after the switch CBP brings both back.

`dohare` (his `cfg/sgd/bp/*.json` and `cfg/adam/bp/*.json` with the six activations): his target
(`threshold=dohare`, all slow bits redrawn every 10,000 steps, a 20-input learner without the
bias bit), 1M examples, 100 seeds per setting, step sizes {0.01, 0.003, 0.001}; one trial per
activation and optimizer (300 members). `dohare_cbp` (his `cfg/sgd/cbp/relu.json`, with 100 seeds
instead of his 1): CBP on SGD, relu, lr 0.01, replacement rate {1e-6, ..., 1e-2}, decay 0.99,
maturity 10 (what his driver uses), adaptable contribution, Bernoulli rounding, no bias
correction (his code's). Cost: about 0.3 (SGD) to 0.7 (CBP) CPU-seconds per 1M-step member:
~20 and ~6 CPU-minutes. Expected (his Fig. 4 family): SGD's binned error over 20,000-example
bins rises over the 1M examples; CBP at rate 1e-4 stays flat. `smoke`: 20,000 steps, 2 widths x
2 methods x 3 seeds.
"""

from __future__ import annotations

from ray import tune

EXPERIMENT = "bitflip"
SCALES = ("smoke", "paper", "dohare", "dohare_cbp")
PAPER_SEEDS = tuple(range(30, 100))  # the paper's grid: 70 seeds
METHODS = [("sgd",), ("sgd_then_cbp",), ("cbp",)]
PAPER_METHODS = ("sgd", "sgd_then_cbp", "cbp")  # one ensemble per width holds all three
DOHARE_ACTIVATIONS = ["sigmoid", "tanh", "elu", "relu", "leaky_relu", "swish"]
DOHARE_PROBLEM = {
    "steps": 1_000_000,
    "threshold": "dohare",
    "flip": "redraw",
    "bias_input": False,
    "seed": tuple(range(100)),
    "metrics_every": 100_000,
}


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
    if scale == "dohare":
        return {
            **DOHARE_PROBLEM,
            "lr": (0.01, 0.003, 0.001),
            "activation": tune.grid_search(DOHARE_ACTIVATIONS),
            "method": tune.grid_search([("sgd",), ("adam",)]),
        }
    if scale == "dohare_cbp":
        return {
            **DOHARE_PROBLEM,
            "method": ("cbp",),
            "cbp.replacement_rate": tune.grid_search([1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
            "cbp.decay": 0.99,
            "cbp.maturity": 10,
            "cbp.util_type": "adaptable_contribution",
            "cbp.rounding": "bernoulli",
            "cbp.bias_correction": False,
        }
    return {
        "engine": "native",
        "metrics_every": 50_000,  # 100 probe points a run: the probe would cost more than training
        "width": tune.grid_search([100, 50, 10, 5]),
        "method": PAPER_METHODS,
    }


def resources(scale: str, point: dict | None = None) -> dict:
    """One CPU per ensemble: the batched loop is fastest on one thread."""
    return {"cpu": 1}
