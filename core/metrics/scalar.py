"""How metric functions return: each is written once as a function that computes a 0-d tensor on
the input's device; its public name returns a Python float, and `.tensor` keeps the on-device
version for the probe, which reads every value to the host in one transfer."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def host_float(fn: Callable[..., torch.Tensor]) -> Callable[..., float]:
    """`fn` (returning a 0-d tensor) as a function returning a float; `.tensor` is `fn` itself."""

    @functools.wraps(fn)
    def as_float(*args, **kwargs) -> float:
        return float(fn(*args, **kwargs))

    as_float.tensor = fn
    return as_float
