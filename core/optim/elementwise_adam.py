"""Adam with a step count per element, so a re-initialised weight restarts its bias correction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class ElementwiseAdam(torch.optim.Optimizer):
    r"""Adam (Kingma & Ba 2015) whose step count t is a tensor shaped like each parameter.

    Per element, with g the gradient plus coupled L2 (`weight_decay * p`)::

        t += 1
        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    the update of `torch.optim.Adam` (same order of operations; the bias corrections in float64)
    with t per element. `state[p]` holds `step`, `exp_avg`, `exp_avg_sq`, each shaped like p, so
    `core.optim.reset_optimizer_state` (which CBP and ReDo call for the weights they
    re-initialise) zeroes all three: a new weight's first update is then about `lr` in size, as
    on a fresh Adam, instead of the `lr * sqrt(1 - beta2^t) / (1 - beta1^t)`-scaled update a
    per-tensor count gives (about 2.9x lr shortly after a reset late in training). This is the
    role of Dohare et al.'s `AdamGnT`; that code applies `lr (1 - beta2^t) m / (sqrt(v) + eps)`
    (its bias-correction line discards its result), which is not reproduced.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                "ElementwiseAdam needs lr >= 0, eps >= 0, weight_decay >= 0, 0 <= betas < 1; got "
                f"lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}"
            )
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim.Optimizer's signature
        with torch.enable_grad():
            loss = None if closure is None else closure()
        for group in self.param_groups:
            options = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros_like(p, dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                buffers = state["exp_avg"], state["exp_avg_sq"], state["step"]
                elementwise_adam_step(p, p.grad, *buffers, **options)
        return loss


def elementwise_adam_step(
    p: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One `ElementwiseAdam` update of p in place (state tensors updated in place). `lr` may be a
    tensor broadcasting against p (the bit-flip ensemble's per-member step sizes)."""
    beta1, beta2 = betas
    if weight_decay:
        grad = grad.add(p, alpha=weight_decay)
    step += 1
    bias_correction1 = 1 - torch.pow(beta1, step)
    bias_correction2_sqrt = (1 - torch.pow(beta2, step)).sqrt()
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.to(p.dtype)).add_(eps)
    step_size = (lr / bias_correction1).to(p.dtype)
    p.addcmul_(exp_avg / denom, step_size, value=-1)
