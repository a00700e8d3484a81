"""Named scalar activations for the theory numerics, as float64 torch functions.

An activation is given by name (one of `KERNEL_ACTIVATIONS`) or as a callable acting elementwise on
a float64 torch tensor (differentiable by autograd where its derivative is needed). Each named
activation also declares its kinks: the pre-activations where it or its derivative jumps, which the
quadrature rules of `core.theory.gaussian` take as panel edges so that they stay exact to rounding
for piecewise-smooth functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.models.blocks import LEAKY_RELU_SLOPE

ActivationLike = str | Callable[[torch.Tensor], torch.Tensor]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2: F.gelu's 0.5 x (1 + erf(x / sqrt 2)) (and
    torch.special.ndtr) cancel to 0 below x ~ -8.5 in float64."""
    return 0.5 * x * torch.special.erfc(-x / math.sqrt(2.0))


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without F.softplus's switch to x above 20 (an error of e^-20)."""
    return torch.logaddexp(x, torch.zeros_like(x))


@dataclass(frozen=True)
class Activation:
    """A scalar activation f: its name, the elementwise function, and its kinks."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]  # elementwise on float64 tensors
    kinks: tuple[float, ...] = ()  # pre-activations where f or f' is discontinuous

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """f'(x) elementwise by autograd (at a kink: the value torch's backward gives)."""
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.fn(x).sum(), x, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad.detach()


KERNEL_ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu", torch.relu, (0.0,)),
        Activation("leaky_relu", lambda x: F.leaky_relu(x, LEAKY_RELU_SLOPE), (0.0,)),
        Activation("tanh", torch.tanh),
        Activation("sigmoid", torch.sigmoid),
        Activation("gelu", _gelu),  # the exact erf form of nn.GELU(), accurate in the tail
        Activation("elu", F.elu, (0.0,)),  # alpha = 1
        Activation("selu", F.selu, (0.0,)),
        Activation("softplus", _softplus),
        Activation("silu", F.silu),
        Activation("sign", torch.sign, (0.0,)),
        Activation("identity", lambda x: x),
    )
}


def resolve(activation: ActivationLike) -> Activation:
    """The `Activation` of a name in `KERNEL_ACTIVATIONS`, or a callable wrapped as one."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        if activation not in KERNEL_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid: {', '.join(KERNEL_ACTIVATIONS)}, "
                "or a callable acting elementwise on float64 torch tensors"
            )
        return KERNEL_ACTIVATIONS[activation]
    if callable(activation):
        name = getattr(activation, "__name__", type(activation).__name__)
        return Activation(name, activation)
    raise TypeError(f"an activation is a name or a callable, got {type(activation).__name__}")
