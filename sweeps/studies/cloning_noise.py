"""Cloning, escape by noisy SGD (paper §2, §B.1, Fig. 2.1 and B.x).

    python -m sweeps run cloning_noise --scale paper    # 900 runs
    make sweep-cloning                                   # both cloning studies at the smoke scale

A base is trained 20 epochs on CIFAR-10 with SGD (lr 0.01), expanded x2 onto the cloning
manifold, then the clone (noisy SGD, sigma_t = sigma0 * decay**t relative to each tensor's gradient
norm, fresh optimizer) and the base (its own SGD, continued) train side by side for 500 epochs.
Grid: 4 models x 3 norms x sigma0 {0.01, 0.02, 0.05} x decay {0, 0.9, 0.99, 0.999, 1} x 5 seeds
(40-44) = 900 runs. `paper` uses SGD without momentum as the paper states; `reference` uses the
momentum 0.9 of the paper's code. Cost: about 4-10 A100 hours a run at 520 epochs. Expected: with
noise the clone leaves the manifold (cloning score below 1, distance growing), more and sooner for
larger sigma0 and slower decay; a single noisy step (decay 0) suffices for MLPs; ViTs escape
little. `smoke`: the same code on a generated 8x8 dataset, 4 trials, about a minute on 2 CPUs.
Each base is trained once for its 15 clones (`SHARED_PREFIX`): 60 base runs and 900 clone runs,
47.6% fewer model-steps than 900 whole runs (`python -m sweeps plan cloning_noise --scale paper`).
"""

from __future__ import annotations

from ray import tune

from core.experiments.cloning import CLONE_FIELDS
from sweeps import configs, costs

EXPERIMENT = "cloning"
# The base's whole trajectory (base_epochs, then clone_epochs of its own SGD) depends on every key
# but the clone's: the 15 sigma0 x decay points of one (arch, norm, seed) share one base run
# (part=base), and their clones start from it (part=clone; docs/sweeps.md, "Shared prefixes").
SHARED_PREFIX = CLONE_FIELDS
SCALES = ("smoke", "paper", "reference")
SEEDS = [40, 41, 42, 43, 44]
# Shared by both cloning studies: the paper's protocol, and its smoke-scale shrinkage.
PROTOCOL = {
    "dataset": "cifar10",
    "factor": 2,
    "base_epochs": 20,
    "clone_epochs": 500,
    "batch_size": 128,
}
SMOKE = {
    "dataset": "synthetic",
    "synthetic.classes": 4,
    "synthetic.train_per_class": 32,
    "synthetic.test_per_class": 8,
    "batch_size": 16,
    "base_epochs": 2,
    "clone_epochs": 3,
    "probe_every": 1,
    "probe_size": 16,
    "model.norm": "batch",
    "device": "cpu",
}


def base_config() -> dict:
    return {
        **PROTOCOL,
        # No dropout of any kind: a ViT's attention dropout follows model.dropout (ModelConfig).
        "model.dropout": 0.0,
        "optimizer.name": "sgd",
        "optimizer.lr": 0.01,
        "optimizer.momentum": 0.0,
        "clone_optimizer.name": "noisy_sgd",
        "clone_optimizer.lr": 0.01,
        "clone_optimizer.momentum": 0.0,
    }


def cloning_space(scale: str, axes: dict, smoke: dict) -> dict:
    """A cloning study's grid (both studies'): the paper's 4 models x 3 norms x `axes` x `SEEDS`,
    or at the smoke scale `SMOKE` with 2 models x `smoke` x 2 seeds."""
    if scale == "smoke":
        mlp_cnn = tune.grid_search(["mlp", "cnn"])
        return {**SMOKE, "model.arch": mlp_cnn, **smoke, "seed": tune.grid_search([0, 1])}
    return {
        "model.arch": tune.grid_search(["mlp", "cnn", "resnet", "vit"]),
        "model.norm": tune.grid_search(["batch", "layer", "none"]),
        **axes,
        "seed": tune.grid_search(SEEDS),
    }


def param_space(scale: str) -> dict:
    space = cloning_space(
        scale,
        {
            "clone_optimizer.sigma0": tune.grid_search([0.01, 0.02, 0.05]),
            "clone_optimizer.decay": tune.grid_search([0.0, 0.9, 0.99, 0.999, 1.0]),
        },
        smoke={"clone_optimizer.sigma0": 0.05, "clone_optimizer.decay": 0.99},
    )
    if scale == "reference":
        space["optimizer.momentum"] = space["clone_optimizer.momentum"] = 0.9
    return space


def resources(scale: str, point: dict | None = None) -> dict:
    """Smoke: one CPU. Otherwise 2 CPUs and `gpu_share` of the trial at `point` (or the grid's
    largest)."""
    return cloning_resources({**base_config(), **param_space(scale)}, scale, point)


def cloning_resources(space: dict, scale: str, point: dict | None) -> dict:
    """`resources` of a cloning study whose space at `scale` is `space` (both studies')."""
    return {"cpu": 1} if scale == "smoke" else {"cpu": 2, "gpu": gpu_share(space, point)}


def gpu_share(space: dict, point: dict | None, table: dict | None = None) -> float:
    """A cloning trial's GPU share (`sweeps.costs.gpu_share`: a whole GPU for ResNet and ViT,
    eighths by measured memory for MLP and CNN) for the models it holds: the base alone in a
    shared base's trial, else base and clone side by side; of the trial at grid point `point`,
    or without a point the largest of the grid of `space` (`table`: the cost table's)."""
    points = [point] if point is not None else configs.grid_points(space)
    shape = "x".join(map(str, costs.SHAPES[space["dataset"]]))
    return max(
        costs.gpu_share(
            [
                costs.Work(EXPERIMENT, phase, p["model.arch"], shape, p["batch_size"], 0)
                for phase in (("base",) if p.get("part") == "base" else ("base", "clone"))
            ],
            table=table,
        )
        for p in points
    )
