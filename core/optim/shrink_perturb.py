"""Shrink-and-perturb (Ash & Adams 2020), and L2 as its shrink-only case."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ShrinkPerturb:
    """After each optimizer step: `p <- (1 - shrink) * p + noise_std * xi`, `xi ~ N(0, I)`.

    Ash & Adams (2020), "On warm-starting neural network training"; the per-step form used by
    Dohare et al. (2024) and the paper's permuted-MNIST script (paper_spec §5.4). `noise_std = 0`
    is decoupled L2 (`p <- (1 - shrink) p`, the permuted script's "L2"); `shrink = 0` is the
    bit-flip script's perturbation only. Coupled L2 (the penalty's gradient added to the gradient)
    is the base optimizer's `weight_decay`. Noise comes from `generator`, one `randn_like` per
    parameter in order.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        shrink: float = 0.0,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 <= shrink < 1 or noise_std < 0:
            raise ValueError(f"need 0 <= shrink < 1 and noise_std >= 0, got {shrink}, {noise_std}")
        if noise_std > 0 and generator is None:
            raise ValueError("shrink-and-perturb with noise needs an explicit torch.Generator")
        self.params = list(params)
        self.shrink = shrink
        self.noise_std = noise_std
        self.generator = generator

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if self.shrink:
                p.mul_(1.0 - self.shrink)
            if self.noise_std:
                xi = torch.randn(
                    p.shape, generator=self.generator, dtype=p.dtype, device=self.generator.device
                )
                p.add_(xi.to(p.device), alpha=self.noise_std)
