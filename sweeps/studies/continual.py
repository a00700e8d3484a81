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


def resources(scale: str) -> dict:
    """Smoke: one CPU. Paper: a quarter A100 per run (the models are small at 64x64)."""
    return {"cpu": 1} if scale == "smoke" else {"cpu": 2, "gpu": 0.25}
