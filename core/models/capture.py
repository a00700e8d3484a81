"""Record the activations of a model's declared layers, their pre-activations, and the loss
gradients with respect to them, during one forward/backward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def unit_matrix(t: torch.Tensor) -> torch.Tensor:
    """The flattening rule: a layer output as a (rows, units) matrix.

    (B, D) stays; (B, C, H, W) -> (B*H*W, C): a row is one position of one image, a column one
    channel; (B, T, D) -> (B*T, D): a row is one token of one image.
    """
    if t.dim() == 2:
        return t
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # (B, H, W, C) -> (B*H*W, C)
    if t.dim() == 3:
        return t.reshape(-1, t.shape[2])
    raise ValueError(f"no flattening rule for a layer output of shape {tuple(t.shape)}")


class Capture:
    """`acts[name]`, `pres[name]` (layers with an activation) and, after backward,
    `grads[name]` for every declared layer, detached."""

    def __init__(self) -> None:
        self.acts: dict[str, torch.Tensor] = {}
        self.pres: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}


@contextmanager
def capture_layers(model: nn.Module, grads: bool = True) -> Iterator[Capture]:
    """Within the block, each forward records every declared layer's output and, for a layer that
    declares an activation, the activation's input (the pre-activations, what
    `core.metrics.frozen_fraction` reads); if `grads`, the backward records d loss / d output.
    Hooks are removed on exit."""
    record = Capture()
    handles = []

    def hook_for(name: str, has_activation: bool):
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            record.acts[name] = output.detach()
            if has_activation:
                record.pres[name] = inputs[0].detach()
            if grads and output.requires_grad:
                output.register_hook(lambda g: record.grads.__setitem__(name, g.detach()))

        return hook

    for layer in model.declared_layers():
        hook = hook_for(layer.name, layer.activation is not None)
        handles.append(layer.module.register_forward_hook(hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
