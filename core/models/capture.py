"""Record the activations of a model's declared layers, and the loss gradients with respect to
them, during one forward/backward pass."""

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
    """`acts[name]` and, after backward, `grads[name]` for every declared layer, detached."""

    def __init__(self) -> None:
        self.acts: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}


@contextmanager
def capture_layers(model: nn.Module, grads: bool = True) -> Iterator[Capture]:
    """Within the block, each forward records every declared layer's output, and (if `grads`) the
    backward records d loss / d output. Hooks are removed on exit."""
    record = Capture()
    handles = []

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            record.acts[name] = output.detach()
            if grads and output.requires_grad:
                output.register_hook(lambda g: record.grads.__setitem__(name, g.detach()))

        return hook

    for layer in model.declared_layers():
        handles.append(layer.module.register_forward_hook(hook_for(layer.name)))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
