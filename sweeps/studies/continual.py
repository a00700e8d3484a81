"""Continual learning on Tiny ImageNet (paper §3.1, Fig. 3.x).

    python -m sweeps run continual --scale paper        # 360 runs
    make sweep-continual                                 # the smoke scale, then the aggregate

40 tasks of 5 classes each (every class once, class order seeded), the head and its optimizer
state reset at every task start, one Adam for the whole run, loss and accuracy masked to the task.
Grid: 4 models x 3 norms x dropout {0, 0.1} x lr {1e-4, 1e-3, 1e-2} x 5 seeds (40-44) = 360 runs.
`paper` trains each task for 500 steps as the paper states; `reference` for 500 epochs as the
paper's code did (10,000 steps per task at batch 128: about 20x the cost). Cost at `reference`:
hours per run on an A100. Expected: without normalization, accuracy on later tasks falls, the
effective rank falls and dead/duplicate fractions rise; normalization slows this.
`smoke` runs the same loop on a generated 8x8 dataset: 4 trials, about a minute on 2 CPUs.
"""

from __future__ import annotations

from ray import tune

from sweeps import configs, costs

EXPERIMENT = "continual"
SCALES = ("smoke", "paper", "reference")


def base_config() -> dict:
    return {
        "dataset": "tiny_imagenet",
        "optimizer.name": "adam",
        "classes_per_task": 5,
        "batch_size": 128,
        "reset_head": True,
        "reset_head_optimizer": True,
    }


def param_space(scale: str) -> dict:
    if scale == "smoke":
        return {
            "dataset": "synthetic",
            "synthetic.classes": 6,
            "synthetic.train_per_class": 24,
            "synthetic.test_per_class": 8,
            "classes_per_task": 2,
            "batch_size": 16,
            "task_length": 6,
            "task_unit": "steps",
            "probe_every": 3,
            "probe_size": 16,
            "checkpoint_every": 6,  # one per task: retries and resumes have a checkpoint to use
            "model.arch": tune.grid_search(["mlp", "cnn"]),
            "model.norm": "batch",
            "model.dropout": 0.0,
            "optimizer.lr": 1e-3,
            "seed": tune.grid_search([0, 1]),
            "device": "cpu",
        }
    grid = {
        "model.arch": tune.grid_search(["vit", "cnn", "resnet", "mlp"]),
        "model.norm": tune.grid_search(["batch", "layer", "none"]),
        "model.dropout": tune.grid_search([0.0, 0.1]),
        "optimizer.lr": tune.grid_search([1e-4, 1e-3, 1e-2]),
        "seed": tune.grid_search([40, 41, 42, 43, 44]),
        "task_length": 500,
    }
    grid["task_unit"] = "steps" if scale == "paper" else "epochs"
    return grid


def resources(scale: str, point: dict | None = None) -> dict:
    """Smoke: one CPU. Otherwise 2 CPUs and the GPU share (`sweeps.costs.gpu_share`: a whole GPU
    for ResNet and ViT, eighths by measured memory for MLP and CNN, x `pack`) of the trial at grid
    point `point` (its values), or, without a point, the largest share of the grid's trials."""
    if scale == "smoke":
        return {"cpu": 1}
    space = {**base_config(), **param_space(scale)}
    points = [point] if point is not None else configs.grid_points(space)
    shape = "x".join(map(str, costs.SHAPES[space["dataset"]]))
    share = max(
        costs.gpu_share(
            [costs.Work("continual", "train", p["model.arch"], shape, p["batch_size"], 0)],
            copies=p.get("pack", 1),
        )
        for p in points
    )
    return {"cpu": 2, "gpu": share}
