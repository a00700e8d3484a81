"""Resetting a base optimizer's per-element state for re-initialised weights."""

from __future__ import annotations

import torch


@torch.no_grad()
def reset_optimizer_state(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    index: tuple | torch.Tensor,
) -> None:
    """Zero, for the entries `param[index]`, every per-element state the optimizer holds.

    Per-element state is any tensor in `optimizer.state[param]` shaped like `param`: SGD's
    `momentum_buffer`, Adam's `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq`), NoisySGD's momentum.
    Scalar state (Adam's per-tensor `step`) is left alone, so Adam's bias correction of a reset
    entry uses its tensor's step count (Dohare et al.'s AdamGnT keeps per-element steps instead).
    Works for any optimizer that keeps such state; an optimizer with none (plain SGD) is a no-op.
    """
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0
