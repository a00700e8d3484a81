"""Stability of a cloning-run checkpoint: normal Hessian spectrum, verdict and escape rate.

A checkpoint is a `torch.save`d dict holding "model_config" (`ModelConfig.to_dict()`) and "model"
(the model's state_dict), at the top level or under "state" (the layout `core.records` writes, e.g.
`runs/<run>/checkpoints/step-*.pt` of `core.experiments.cloning`, whose "model" is the clone after
the expansion). Loading unpickles: open only checkpoints you trust. The data come from the run's
`config.json` two folders up (dataset, data_root, synthetic), unless given explicitly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from core.cloning import manifold_distance
from core.data import SyntheticSpec, load_images
from core.models import ModelConfig, build_model
from core.theory.stability import escape_rate, model_loss, normal_hessian_spectrum, predicted_rate

MODES = ("eval", "train")


def load_model(path: str | Path, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The model of a checkpoint (see the module docstring), rebuilt without dropout, in `dtype`."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state", state)
    missing = [k for k in ("model_config", "model") if k not in state]
    if missing:
        raise KeyError(
            f"{path} lacks {', '.join(missing)}: a checkpoint for the stability analysis is a "
            "torch.save'd dict with 'model_config' (ModelConfig.to_dict()) and 'model' (state_dict)"
        )
    cfg = ModelConfig(**state["model_config"])
    changes = {"dropout": 0.0}
    if cfg.attn_dropout is not None:
        changes["attn_dropout"] = 0.0
    model = build_model(dataclasses.replace(cfg, **changes))
    model.load_state_dict(state["model"])
    return model.to(dtype)


def _run_config(path: Path) -> dict:
    config = path.parent.parent / "config.json"
    return json.loads(config.read_text())["config"] if config.is_file() else {}


def stability_report(
    checkpoint: str | Path,
    dataset: str | None = None,
    data_root: str | None = None,
    samples: int = 512,
    lanczos_steps: int = 40,
    eps: float = 1e-4,
    lr: float = 0.01,
    escape_steps: int = 100,
    mode: str = "eval",
    seed: int = 0,
) -> dict:
    """Lanczos on the normal Hessian and the empirical escape rate of a checkpoint's model.

    The loss is the cross-entropy on `samples` training images (drawn with `seed`), in float64,
    with the model in `mode` (eval: BatchNorm running statistics; train: batch statistics) and
    dropout off. The escape starts from the checkpoint plus eps times a random unit normal vector
    and runs `escape_steps` steps of full-batch gradient descent with step `lr`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    path = Path(checkpoint)
    run = _run_config(path)
    dataset = dataset or run.get("dataset")
    if dataset is None:
        raise ValueError(
            f"no dataset: {path.parent.parent / 'config.json'} does not exist; pass the dataset "
            "the model was trained on (--dataset)"
        )
    synthetic = SyntheticSpec(**run["synthetic"]) if "synthetic" in run else None
    data = load_images(dataset, data_root or run.get("data_root"), synthetic=synthetic)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=generator)[:samples]
    x, y = data.inputs(data.train_x[idx]).double(), data.train_y[idx]

    model = load_model(path).train(mode == "train")
    loss_fn = model_loss(model, x, y)
    spectrum = normal_hessian_spectrum(model, loss_fn, lanczos_steps, generator)
    escape = escape_rate(model, lambda m: model_loss(m, x, y), eps, escape_steps, lr, generator)
    with torch.no_grad():
        loss = float(loss_fn(dict(model.named_parameters())))
    return {
        "checkpoint": str(path),
        "arch": model.cfg.arch,
        "clone_factor": model.cfg.clone_factor,
        "dataset": dataset,
        "samples": len(y),
        "mode": mode,
        "loss": loss,
        "manifold_distance": manifold_distance(model),
        "lanczos_steps": len(spectrum.ritz_values),
        "lambda_min": spectrum.lambda_min,
        "lambda_max": spectrum.lambda_max,
        "verdict": spectrum.verdict,
        "ritz_values": spectrum.ritz_values.tolist(),
        "escape": {
            "eps": eps,
            "lr": lr,
            "steps": escape_steps,
            "rate": escape.rate,
            "predicted_rate": predicted_rate(spectrum.ritz_values, lr),
            "fit_from": escape.fit_from,
            "distances": escape.distances,
        },
    }
