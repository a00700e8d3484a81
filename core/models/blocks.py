"""Building blocks shared by the models: activations, norms, the clone-aware flatten, and the
`Layer` declaration through which metrics, cloning checks and CBP find a model's units."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

LEAKY_RELU_SLOPE = 0.1  # the paper code's activation factory uses LeakyReLU(0.1)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module (a module, never a function, so that hooks can see it)."""
    modules = {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "swish": nn.SiLU,
        "identity": nn.Identity,
    }
    if name not in modules:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(modules)}")
    return modules[name]()


def activation_gain(name: str) -> float:
    """The gain of the uniform re-initialisation `U(-g sqrt(3/fan_in), +g sqrt(3/fan_in))`.

    As in Dohare et al. (2024): relu-like activations (gelu, elu, swish) take relu's sqrt(2);
    selu takes LeCun's 1; the rest follow `torch.nn.init.calculate_gain`.
    """
    if name in ("relu", "gelu", "elu", "swish"):
        return math.sqrt(2.0)
    if name == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", LEAKY_RELU_SLOPE)
    if name == "tanh":
        return 5.0 / 3.0
    if name in ("sigmoid", "identity", "selu"):
        return 1.0
    raise ValueError(f"unknown activation {name!r}")


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over (batch x tokens) for a (B, T, D) token sequence."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D) -> (B, D, T) -> (B, T, D)


def make_norm(kind: str, features: int, layout: str) -> nn.Module:
    """A norm over `features` units laid out as `layout` in {"vector", "conv", "tokens"}.

    `layer` is LayerNorm for vectors and tokens and GroupNorm(1, C) (LayerNorm over C, H, W) for
    conv maps. Only the requested module is built, so any width works.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return {"vector": nn.BatchNorm1d, "conv": nn.BatchNorm2d, "tokens": TokenBatchNorm}[layout](
            features
        )
    if kind == "layer":
        return nn.GroupNorm(1, features) if layout == "conv" else nn.LayerNorm(features)
    raise ValueError(f"unknown norm {kind!r}; valid: batch, layer, none")


class CloneAwareFlatten(nn.Module):
    """Flatten a (B, C, H, W) map so that the clones of a channel stay adjacent.

    With `factor` E, channel c = k*E + j (k the base channel, j the clone) goes to feature
    (k*H*W + p)*E + j, where p is the spatial position: exactly the base flatten index k*H*W + p
    tiled E times, which is the interleaved layout the next Linear layer is expanded with.
    Expanding twice (E1 then E2) gives the same order as expanding once by E1*E2. E = 1 is the
    plain flatten.
    """

    def __init__(self, factor: int = 1) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        e = self.factor
        if e == 1:
            return x.flatten(1)
        x = x.view(b, c // e, e, h, w)  # (B, C/E, E, H, W)
        return x.permute(0, 1, 3, 4, 2).flatten(1)  # (B, C/E, H, W, E) -> (B, C*H*W)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


@dataclass(frozen=True, eq=False)
class Layer:
    """A declared layer of units: what the metrics probe hooks and what CBP may re-initialise.

    `module`'s forward output is the layer's activation: (B, D) vectors, (B, C, H, W) conv maps
    (units = channels) or (B, T, D) tokens (units = last dim). For a layer of hidden units,
    `incoming` is the Linear/Conv whose output channel i feeds unit i, `norm` the per-unit norm in
    between (or None), and `outgoing` the Linear/Conv reading the unit; `outgoing_index[i]` lists
    the input columns of `outgoing` that unit i feeds (None: column i). Block outputs (ResNet,
    ViT) have no incoming/outgoing: they are measured, never re-initialised.
    """

    name: str
    module: nn.Module
    incoming: nn.Module | None = None
    norm: nn.Module | None = None
    outgoing: nn.Module | None = None
    outgoing_index: torch.Tensor | None = None
    activation: str | None = None

    @property
    def has_units(self) -> bool:
        """Whether CBP-style unit replacement applies (incoming and outgoing weights known)."""
        return self.incoming is not None and self.outgoing is not None
