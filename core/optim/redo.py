"""ReDo, recycling dormant units (Sokar et al., ICML 2023, "The dormant neuron phenomenon in deep
reinforcement learning"), as a second policy on the unit-replacement machinery of CBP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from core.metrics import dormancy_scores
from core.optim.reinit import UnitReset


class ReDo(UnitReset):
    """Every `period` calls of `step()`, re-initialise every unit with dormancy score s_i <= tau.

    Scores (`core.metrics.dormancy_scores`, s_i = mean_B |h_i| / mean_j mean_B |h_j|) from the
    activations of the last training forward pass; a dormant unit gets what CBP gives a replaced
    unit (new uniform incoming weights with the activation's gain, bias 0, norm reset, outgoing
    weights 0, its optimizer state zeroed), with no bias correction. `generator` is required;
    `layers` as in `ContinualBackprop`. Randomness: each reset step draws `units * fan_in`
    uniforms per layer (candidate row j for the j-th dormant unit in index order), so the stream
    depends only on the step count. Sokar et al.'s defaults: tau = 0.1 (0.025 for some agents);
    Dohare's RL configs use period 100.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        threshold: float = 0.1,
        period: int = 1000,
        generator: torch.Generator,
        layers: Sequence[str] | None = None,
    ) -> None:
        if threshold < 0 or period < 1:
            raise ValueError(
                f"ReDo needs threshold >= 0 and period >= 1, got {threshold}, {period}"
            )
        super().__init__(model, optimizer, generator, layers)
        self.threshold = threshold
        self.period = period
        self.calls = 0

    @torch.no_grad()
    def step(self) -> dict[str, int]:
        """Count a step; on every `period`-th, reset the dormant units. Returns {layer: units
        reset this step}."""
        self.calls += 1
        reset = {unit.layer.name: 0 for unit in self.layers}
        if self.calls % self.period:
            return reset
        for i, unit in enumerate(self.layers):
            weight = unit.layer.incoming.weight
            draws = torch.rand(
                unit.units * unit.fan_in, generator=self.generators[i], dtype=weight.dtype
            ).to(weight.device)
            dormant = dormancy_scores(self.activations(i)[0]) <= self.threshold
            units = dormant.nonzero().flatten().to(weight.device)
            n = len(units)
            if n:
                rows = draws[: n * unit.fan_in].view(n, unit.fan_in)
                unit.replace(units, rows, None, self.optimizer)
                reset[unit.layer.name] = n
        return reset

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "rng": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        for g, saved in zip(self.generators, state["rng"]):
            g.set_state(saved)
