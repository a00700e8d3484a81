"""Noisy SGD: SGD on gradients perturbed by Gaussian noise scaled to each tensor's gradient norm.

Paper §B.1.2 ("Noisy SGD optimizer"); docs/optim.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.sgd import sgd

NOISE_BLOCK = 16  # the noise vector of one step is padded to a multiple of this many draws
# the keys of a parameter group passed on to torch's functional `sgd` (maximize: always False)
_SGD_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")


def noise_size(numel: int) -> int:
    """Standard-normal draws one step takes for `numel` parameters: `numel` rounded up to 16.

    Drawing a multiple of 16 per step makes `randn(L, noise_size(n))` equal to L successive
    `randn(noise_size(n))` draws (torch's CPU normal sampler works in blocks of 16), which lets a
    batched ensemble pre-draw the noise of many steps at once and still match a single run.
    """
    return -(-numel // NOISE_BLOCK) * NOISE_BLOCK


class NoisySGD(torch.optim.Optimizer):
    r"""SGD whose gradient of each parameter tensor is perturbed before the update.

    Update at optimizer step t = 0, 1, ... (paper §B.1.2)::

        sigma_t = sigma0 * decay**t                      (0**0 = 1: decay = 0 is one noisy step)
        d_p     = g_p + sigma_t * ||g_p||_2 * xi_p,      xi_p ~ N(0, I), one draw per tensor p
        then the torch.optim.SGD update on d_p (weight decay, momentum, dampening, Nesterov),
        the noise entering the momentum buffer.

    The noise is relative to the *per-tensor* gradient norm, so each coordinate has standard
    deviation sigma_t ||g_p||. With sigma0 = 0 the update is torch.optim.SGD's, bit for bit (the
    same functional `sgd` runs on the unperturbed gradients). Momentum defaults to the paper's 0
    ("SGD without momentum"; the paper's code used 0.9).

    Randomness: each step with sigma_t > 0 draws one vector of `noise_size(sum of numel)` standard
    normals from `generator`, split over the parameters in `param_groups` order (parameters
    without a gradient leave their slice unused), so the stream position depends only on the step
    count. `generator` is required (no hidden default stream). The step count and the generator
    state are part of `state_dict()`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        sigma0: float,
        decay: float = 1.0,
        momentum: float = 0.0,
        *,
        generator: torch.Generator,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr < 0 or sigma0 < 0 or not 0 <= decay <= 1 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                "NoisySGD needs lr >= 0, sigma0 >= 0, 0 <= decay <= 1, momentum >= 0, "
                f"weight_decay >= 0; got lr={lr}, sigma0={sigma0}, decay={decay}, "
                f"momentum={momentum}, weight_decay={weight_decay}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=False,
        )
        super().__init__(params, defaults)
        self.sigma0 = sigma0
        self.decay = decay
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                "NoisySGD needs an explicit torch.Generator (generator=...), e.g. "
                "torch.Generator().manual_seed(seed_for(seed, 'noise'))"
            )
        self.generator = generator
        self.noise_step = 0

    def sigma(self) -> float:
        """sigma_t for the next step."""
        return self.sigma0 * self.decay**self.noise_step

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim.Optimizer's signature
        with torch.enable_grad():
            loss = None if closure is None else closure()
        sigma = self.sigma()
        all_params = [p for group in self.param_groups for p in group["params"]]
        noise = None
        if sigma > 0:
            total = sum(p.numel() for p in all_params)
            noise = torch.randn(
                noise_size(total),
                generator=self.generator,
                dtype=all_params[0].dtype,
                device=self.generator.device,
            )
        offset = 0
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            for p in group["params"]:
                n = p.numel()
                if p.grad is not None:
                    grad = p.grad
                    if noise is not None:
                        xi = noise[offset : offset + n].view_as(p).to(p.device)
                        grad = grad + sigma * torch.linalg.vector_norm(grad) * xi
                    params.append(p)
                    grads.append(grad)
                    if group["momentum"] != 0:
                        buffers.append(self.state[p].get("momentum_buffer"))
                offset += n
            sgd(params, grads, buffers, maximize=False, **{k: group[k] for k in _SGD_OPTIONS})
            if group["momentum"] != 0:
                for p, buf in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = buf
        self.noise_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["noise"] = {"step": self.noise_step, "rng": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        noise = state_dict.pop("noise")
        super().load_state_dict(state_dict)
        self.noise_step = int(noise["step"])
        self.generator.set_state(noise["rng"])
