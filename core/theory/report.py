"""Stability of a cloning-run checkpoint: normal Hessian spectrum, verdict and escape rate.

A checkpoint is a `torch.save`d dict holding "model_config" (`ModelConfig.to_dict()`) and "model"
(the model's state_dict), at the top level or under "state" (what a run record's checkpoints hold,
e.g. those of `core.experiments.cloning`, whose "model" is the clone after the expansion). Loading
unpickles: open only checkpoints you trust. The data come from the run record the checkpoint
belongs to (dataset, data_root, synthetic of its config), unless given explicitly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from core.data import SyntheticSpec, load_images
from core.models import ModelConfig, build_model
from core.run.schema import is_record, read_config
from core.theory.manifold import CloneStructure
from core.theory.stability import MODES, analyse_stability, model_loss


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


def training_batch(
    checkpoint: Path,
    dataset: str | None,
    data_root: str | None,
    samples: int,
    generator: torch.Generator,
    hint: str = "--dataset",
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(dataset, float64 inputs, labels) of `samples` training images drawn with `generator`: of
    `dataset` in `data_root` where given, else of the run record holding `checkpoint`."""
    run_dir = checkpoint.parent.parent
    run = read_config(run_dir)["config"] if is_record(run_dir) else {}
    dataset = dataset or run.get("dataset")
    if dataset is None:
        raise ValueError(
            f"no dataset: {checkpoint} is not inside a run record; pass the dataset the model was "
            f"trained on ({hint})"
        )
    synthetic = SyntheticSpec(**run["synthetic"]) if run.get("synthetic") else None
    data = load_images(dataset, data_root or run.get("data_root"), synthetic=synthetic)
    idx = torch.randperm(len(data.train_y), generator=generator)[:samples]
    return dataset, data.inputs(data.train_x[idx]).double(), data.train_y[idx]


def stability_report(
    checkpoint: str | Path,
    dataset: str | None = None,
    data_root: str | None = None,
    samples: int = 512,
    lanczos_steps: int = 40,
    eps: float = 1e-4,
    lr: float = 0.01,
    escape_steps: int | None = None,
    max_escape_steps: int = 5000,
    mode: str = "eval",
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Lanczos on the reduced normal Hessian and the escape along its softest eigenvector.

    The loss is the cross-entropy on `samples` training images (drawn with `seed`), in float64 on
    `device`, with the model in `mode` (eval: BatchNorm running statistics; train: batch statistics,
    never written back) and dropout off. The escape starts from the checkpoint plus eps times the
    unit Ritz vector of lambda_min and runs `escape_steps` steps of full-batch gradient descent
    with step `lr`; by default ESCAPE_EFOLDS / (lr |lambda_min|) steps, at most
    `max_escape_steps`. `escape.horizon_too_short` says when fewer ran.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    path = Path(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    dataset, x, y = training_batch(path, dataset, data_root, samples, generator)
    x, y = x.to(device), y.to(device)

    model = load_model(path).to(device).train(mode == "train")
    structure = CloneStructure.of_clone(model)
    s = analyse_stability(
        model,
        lambda m: model_loss(m, x, y),
        lanczos_steps,
        lr,
        generator,
        structure,
        escape_steps,
        max_escape_steps,
        eps,
    )
    spectrum, escape = s.spectrum, s.escape
    with torch.no_grad():
        loss = float(model_loss(model, x, y)(dict(model.named_parameters())))
    return {
        "checkpoint": str(path),
        "arch": model.cfg.arch,
        "clone_factor": model.cfg.clone_factor,
        "dataset": dataset,
        "samples": len(y),
        "mode": mode,
        "device": device,
        "loss": loss,
        "manifold_distance": structure.distance(dict(model.named_parameters())),
        "dimensions": spectrum.dimensions,
        "symmetries_removed": list(spectrum.removed),
        "symmetry_checks": spectrum.symmetry_checks,
        "reduced_normal_dimension": spectrum.reduced_dimension,
        "lanczos_steps": len(spectrum.ritz_values),
        "lambda_min": spectrum.lambda_min,
        "lambda_max": spectrum.lambda_max,
        "residual_min": float(spectrum.residuals[0]),
        "residual_max": float(spectrum.residuals[-1]),
        "tolerance": spectrum.tolerance,
        "verdict": spectrum.verdict,
        "ritz_values": spectrum.ritz_values.tolist(),
        "residuals": spectrum.residuals.tolist(),
        "escape": {
            "eps": eps,
            "lr": lr,
            "steps": s.steps,
            "required_steps": s.required_steps,
            "horizon_too_short": escape is not None and escape.horizon_too_short,
            "rate": None if escape is None else escape.rate,
            "predicted_rate_softest": s.predicted_rate_softest,
            "predicted_rate": s.predicted_rate,
            "fit_from": None if escape is None else escape.fit_from,
            "distances": [] if escape is None else escape.distances,
        },
    }
