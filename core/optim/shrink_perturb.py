"""Shrink-and-perturb (Ash & Adams 2020), and L2 as its shrink-only case."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from core.optim.noisy_sgd import noise_size


class ShrinkPerturb:
    """After each optimizer step: `p <- (1 - shrink) * p + noise_std * xi`, `xi ~ N(0, I)`.

    Ash & Adams (2020), "On warm-starting neural network training"; the per-step form Dohare et
    al. (2024) use (their "shrink-and-perturb" is coupled L2, the base optimizer's
    `weight_decay`, plus this noise with `shrink = 0`, on every weight and bias). `noise_std = 0`
    is decoupled L2 (`p <- (1 - shrink) p`, the paper's permuted-MNIST "L2"); `shrink = 0` is the
    paper's bit-flip script's perturbation only.

    Randomness: `generator` is required. Each step with noise draws one vector of
    `noise_size(sum of numel)` standard normals (a multiple of 16, as `NoisySGD`, so a batched
    ensemble can pre-draw many steps at once) and splits it over the parameters in order.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        shrink: float = 0.0,
        noise_std: float = 0.0,
        *,
        generator: torch.Generator,
    ) -> None:
        if not 0 <= shrink < 1 or noise_std < 0:
            raise ValueError(f"need 0 <= shrink < 1 and noise_std >= 0, got {shrink}, {noise_std}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                "ShrinkPerturb needs an explicit torch.Generator (generator=...), e.g. "
                "torch.Generator().manual_seed(seed_for(seed, 'shrink_perturb'))"
            )
        self.params = list(params)
        self.shrink = shrink
        self.noise_std = noise_std
        self.generator = generator
        self.size = noise_size(sum(p.numel() for p in self.params))

    @torch.no_grad()
    def step(self) -> None:
        xi = None
        if self.noise_std:
            xi = torch.randn(
                self.size,
                generator=self.generator,
                dtype=self.params[0].dtype,
                device=self.generator.device,
            )
        offset = 0
        for p in self.params:
            if self.shrink:
                p.mul_(1.0 - self.shrink)
            if xi is not None:
                noise = xi[offset : offset + p.numel()].view_as(p).to(p.device)
                p.add_(noise, alpha=self.noise_std)
            offset += p.numel()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
