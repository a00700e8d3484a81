"""Cloning, escape by dropout, and SGD vs Adam (paper §2, §B.1, Fig. 2.1 and B.x).

    python -m sweeps run cloning_dropout --scale paper  # 1,080 runs
    make sweep-cloning                                   # both cloning studies at the smoke scale

As `cloning_noise`, with the base and the clone trained by the same optimizer configuration (each
its own state, the clone's fresh at cloning) and dropout p in both models. Grid: 4 models x 3 norms
x dropout {0, 0.1, 0.2} x {SGD, Adam} x lr {1e-2, 1e-3, 1e-4} x 5 seeds (40-44) = 1,080 runs (the
reference's shell script dropped its seed, optimizer and lr flags; here they are part of every
run's config). `paper` uses SGD without momentum; `reference` the momentum 0.9 of the paper's code.
Expected: with p = 0 the clone stays exactly on the manifold under SGD and Adam (cloning score 1);
dropout breaks the symmetry and the clone escapes. p is all dropout, the ViT's attention dropout
included (the reference code left it at 0.1 in every ViT run). `smoke`: 4 trials on a generated
dataset.
"""

from __future__ import annotations

from ray import tune

from sweeps.configs import same_as
from sweeps.studies.cloning_noise import PROTOCOL, cloning_resources, cloning_space

EXPERIMENT = "cloning"
SCALES = ("smoke", "paper", "reference")
# No SHARED_PREFIX: every axis changes the base too (p is both models' dropout, the clone's
# optimizer is tied to the base's by same_as), so no two points share a base run.


def base_config() -> dict:
    return {
        **PROTOCOL,
        "optimizer.momentum": 0.0,
        "clone_optimizer.name": same_as("optimizer.name"),
        "clone_optimizer.lr": same_as("optimizer.lr"),
        "clone_optimizer.momentum": same_as("optimizer.momentum"),
    }


def param_space(scale: str) -> dict:
    space = cloning_space(
        scale,
        {
            # p is all dropout: a ViT's attention dropout follows model.dropout (ModelConfig),
            # and the copies of a cloned head share one attention mask
            # (model.independent_head_masks).
            "model.dropout": tune.grid_search([0.0, 0.1, 0.2]),
            "optimizer.name": tune.grid_search(["sgd", "adam"]),
            "optimizer.lr": tune.grid_search([1e-2, 1e-3, 1e-4]),
        },
        smoke={"model.dropout": 0.1, "optimizer.name": "sgd", "optimizer.lr": 0.01},
    )
    if scale == "reference":
        space["optimizer.momentum"] = 0.9
    return space


def resources(scale: str, point: dict | None = None) -> dict:
    """Smoke: one CPU. Otherwise 2 CPUs and the GPU share of the trial at `point` (or the grid's
    largest): `cloning_noise.gpu_share`."""
    return cloning_resources({**base_config(), **param_space(scale)}, scale, point)
