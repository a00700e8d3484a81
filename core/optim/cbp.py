"""Continual Backprop (Dohare et al., Nature 2024, "Loss of plasticity in deep continual learning";
Dohare et al. 2021, arXiv:2108.06325): gradient descent plus, after every update, a
generate-and-test pass that replaces a small fraction of each layer's lowest-utility mature units.

`CBPState` is the algorithm on stacked `(members, units)` statistics, shared by the module adapter
`ContinualBackprop` (one model, any declared layers) and the batched bit-flip ensemble (many
members), so there is one CBP. See docs/optim.md for the deviations from the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from core.optim.reinit import UnitReset

UTIL_TYPES = (
    "contribution",
    "zero_contribution",
    "adaptable_contribution",
    "feature_by_input",
    "weight",
    "adaptation",
    "random",
)
ROUNDINGS = ("carry", "bernoulli")


def max_replacements(replacement_rate: float, units: int) -> int:
    """The most units one step can replace in a layer of `units`: ceil(rate * units)."""
    return math.ceil(replacement_rate * units)


class CBPState:
    r"""Utilities, ages and replacement counts of one layer for M stacked members.

    Per step, with h the layer's activations (pre-update, post-activation), `eta` the decay, and
    weight magnitudes from the current (post-update) weights (Dohare et al. 2024, Methods)::

        age += 1;  c = 1 - eta**age                                 (bias correction, age >= 1)
        f = eta f + (1 - eta) mean_B h;          fhat = f / c      (running mean activation)
                                                 (computed as lerp(f, mean_B h, 1 - eta))
        y = utility(h, fhat, out, in)   (out_i = mean_k |W_next[k, i]|, in_i = mean_j |W[i, j]|)
        u = eta u + (1 - eta) y;                 uhat = u / c
        E = {i : age_i > maturity}

    `util_type`: contribution `out * mean_B|h|` (the paper's CBP), zero_contribution
    `out * mean_B|h - fhat|`, adaptable_contribution `out * mean_B|h - fhat| / in`,
    feature_by_input `mean_B|h - fhat| / in`, weight `out`, adaptation `1 / in`; random (Dohare
    et al.'s baseline): uhat is replaced by fresh U(0, 1) draws every step (`util_uniforms`).

    Replacements this step, proportional to the mature count |E| (`rounding`):
    carry: r_t = floor(rate * S_t) - R_{t-1}, S_t = sum_{s<=t} |E_s|, R the replacements so far
    (the carried fraction kept exactly: after K steps R = floor(rate * S_K));
    bernoulli (Dohare's default): k = rate |E|; r = floor(k) if k >= 1, else 1 with probability k.
    r is capped at `max_replacements` (a capped remainder stays owed in carry mode). The r mature
    units with the smallest uhat are replaced (stable sort: ties go to the lower index).
    """

    def __init__(
        self,
        members: int,
        units: int,
        *,
        replacement_rate: float,
        decay: float,
        maturity: int,
        util_type: str,
        rounding: str,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if util_type not in UTIL_TYPES:
            raise ValueError(f"unknown util_type {util_type!r}; valid: {', '.join(UTIL_TYPES)}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")
        if not 0 <= replacement_rate <= 1 or not 0 <= decay < 1 or maturity < 0:
            raise ValueError(
                "CBP needs 0 <= replacement_rate <= 1, 0 <= decay < 1, maturity >= 0; got "
                f"{replacement_rate}, {decay}, {maturity}"
            )
        self.rate = replacement_rate
        self.decay = decay
        self.maturity = maturity
        self.util_type = util_type
        self.rounding = rounding
        self.max_r = max_replacements(replacement_rate, units)
        kw = dict(dtype=dtype, device=device)
        self.age = torch.zeros(members, units, **kw)
        self.util = torch.zeros(members, units, **kw)
        self.mean = torch.zeros(members, units, **kw)
        # Counts in float64: exact integers, and no conversions in the step.
        self.mature_seen = torch.zeros(members, dtype=torch.float64, device=device)
        self.replaced = torch.zeros(members, dtype=torch.float64, device=device)
        self._positions = torch.arange(units, device=device)
        self._correction = torch.ones(members, units, **kw)

    @property
    def needs_in_magnitude(self) -> bool:
        return self.util_type in ("adaptable_contribution", "feature_by_input", "adaptation")

    def draws_per_step(self, fan_in: int) -> int:
        """Uniforms one step draws per member: the Bernoulli draw, one per unit for the `random`
        utility, then `max_r` candidate rows of `fan_in` (see `split_draws`)."""
        units = self.age.shape[1]
        return 1 + (units if self.util_type == "random" else 0) + self.max_r * fan_in

    def split_draws(
        self, draws: torch.Tensor, fan_in: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(M, draws_per_step) -> the Bernoulli uniform (M,), the random utilities (M, units) or
        None, the candidate rows (M, max_r, fan_in)."""
        units = self.age.shape[1] if self.util_type == "random" else 0
        util = draws[:, 1 : 1 + units] if units else None
        rows = draws[:, 1 + units :].reshape(len(draws), self.max_r, fan_in)
        return draws[:, 0], util, rows

    def observe(
        self,
        h: torch.Tensor,
        out_mag: torch.Tensor,
        in_mag: torch.Tensor | None,
        util_uniforms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update ages, running mean and utility from h (M, B, units); return uhat (M, units)."""
        eta = self.decay
        self.age += 1
        c = torch.pow(eta, self.age)
        torch.sub(1.0, c, out=self._correction)
        single = h.shape[1] == 1  # one example (online learning): means over B are the row
        self.mean.lerp_(h[:, 0] if single else h.mean(1), 1.0 - eta)
        kind = self.util_type
        if kind == "random":
            if util_uniforms is None:
                raise ValueError("util_type='random' needs util_uniforms (see split_draws)")
            return util_uniforms
        if kind == "contribution":
            y = out_mag * (h[:, 0].abs() if single else h.abs().mean(1))
        elif kind == "weight":
            y = out_mag
        elif kind == "adaptation":
            y = 1.0 / in_mag
        else:
            dev = (h - (self.mean / self._correction)[:, None]).abs().mean(1)
            if kind == "zero_contribution":
                y = out_mag * dev
            elif kind == "adaptable_contribution":
                y = out_mag * dev / in_mag
            else:  # feature_by_input
                y = dev / in_mag
        self.util.lerp_(y, 1.0 - eta)
        return self.util / self._correction

    def count(self, mature: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """(M,) float64 (integer-valued): replacements this step, from the mature mask and one
        uniform per member."""
        n_mature = mature.sum(1, dtype=torch.float64)
        if self.rounding == "carry":
            self.mature_seen += n_mature
            r = torch.floor(self.mature_seen * self.rate) - self.replaced
        else:
            k = n_mature * self.rate
            r = torch.where(k >= 1, torch.floor(k), (uniform < k).to(k.dtype))
        r = r.clamp_(max=self.max_r)
        self.replaced += r
        return r

    def step(
        self,
        h: torch.Tensor,
        out_mag: torch.Tensor,
        in_mag: torch.Tensor | None,
        uniform: torch.Tensor,
        skip_if_none: bool = False,
        util_uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """One generate-and-test step: (order, mask, r), or None with `skip_if_none` when no
        member replaces a unit (that check reads r: a host synchronisation on a GPU).

        `order` (M, units): units by increasing uhat, immature ones last; the first r[m] of row m
        are replaced, and `mask` (M, units) marks them. Replaced unit `order[m, j]` takes the j-th
        candidate row of the step. Call `corrected_mean()` (for the bias correction) and then
        `reset(mask)` after re-initialising the weights.
        """
        uhat = self.observe(h, out_mag, in_mag, util_uniforms)
        mature = self.age > self.maturity
        r = self.count(mature, uniform)
        if skip_if_none and not bool(r.any()):
            return None
        key = torch.where(mature, uhat, torch.inf)
        order = torch.sort(key, dim=1, stable=True).indices
        chosen = self._positions < r[:, None]  # (M, units): sorted position j < r
        mask = torch.zeros_like(chosen).scatter_(1, order, chosen)
        return order, mask, r

    def corrected_mean(self) -> torch.Tensor:
        """fhat = f / (1 - eta**age) (M, units), as of the last `observe`."""
        return self.mean / self._correction

    def reset(self, mask: torch.Tensor) -> None:
        """Replaced units restart: utility, running mean and age 0."""
        self.util.masked_fill_(mask, 0)
        self.mean.masked_fill_(mask, 0)
        self.age.masked_fill_(mask, 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "age": self.age.clone(),
            "util": self.util.clone(),
            "mean": self.mean.clone(),
            "mature_seen": self.mature_seen.clone(),
            "replaced": self.replaced.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("age", "util", "mean", "mature_seen", "replaced"):
            getattr(self, name).copy_(state[name])


class ContinualBackprop(UnitReset):
    """CBP on any model that declares its layers: call `step()` after every `optimizer.step()`.

    Per layer and step: `CBPState.step` on the activations of the last training forward pass, then
    for each replaced unit (Dohare et al. 2024, Methods): incoming weights
    ~ U(+-gain(act) sqrt(3 / fan_in)), incoming bias 0, a per-unit norm reset (weight 1, bias 0,
    running mean 0, running var 1: the norm right after the unit's producer, e.g. the first norm
    inside a ResNet block), the consumer's bias += W_next[:, i] * fhat_i (`bias_correction`, see
    below), outgoing weights 0, utility/mean/age 0, and the base optimizer's per-element state of
    those weights zeroed (`reset_optimizer_state`).

    Bias correction (`bias_correction=True`, the intent of Dohare et al.'s code, where it is a
    no-op because the mean is zeroed first; False reproduces that no-op): computed before fhat is
    reset, it moves the consumer's pre-activation on an input x by -W_next[:, i] (h_i(x) - fhat_i)
    instead of -W_next[:, i] h_i(x). That is exact for a unit whose activation is constant and an
    approximation otherwise (zero only on average over inputs distributed like the recent
    training inputs). It is applied only where the consumer is a Linear reading the activation
    directly and not followed by a norm (`UnitLayer.bias_correctable`): behind pooling or a
    flatten the consumer does not see fhat, and a following norm would remove the shift.

    `layers`: the declared layers to run on (None: all that can host CBP; others raise, naming the
    valid ones; `unit_layer_names(model)` lists them). `generator` is required. Randomness: each
    step, each layer draws `CBPState.draws_per_step(fan_in)` uniforms from its own generator
    whether or not it replaces (`CBPState.split_draws`: the Bernoulli draw, the `random`
    utilities, the candidate rows; the j-th replaced unit takes row j). The stream position thus
    depends only on the step count, which is what lets the batched ensemble pre-draw it and match
    this class. `replacement_rate = 0` leaves the model and the optimizer untouched.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        replacement_rate: float = 1e-4,
        decay: float = 0.99,
        maturity: int = 100,
        util_type: str = "contribution",
        rounding: str = "carry",
        bias_correction: bool = True,
        generator: torch.Generator,
        layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, optimizer, generator, layers)
        self.bias_correction = bias_correction
        self.states = [
            CBPState(
                1,
                unit.units,
                replacement_rate=replacement_rate,
                decay=decay,
                maturity=maturity,
                util_type=util_type,
                rounding=rounding,
                dtype=unit.layer.incoming.weight.dtype,
                device=unit.layer.incoming.weight.device,
            )
            for unit in self.layers
        ]

    @torch.no_grad()
    def step(self) -> dict[str, int]:
        """One generate-and-test pass over every layer: {layer name: units replaced this step}."""
        replaced = {}
        for i, (unit, state) in enumerate(zip(self.layers, self.states)):
            weight = unit.layer.incoming.weight
            draws = torch.rand(
                1,
                state.draws_per_step(unit.fan_in),
                generator=self.generators[i],
                dtype=weight.dtype,
            ).to(weight.device)
            uniform, util_uniforms, rows = state.split_draws(draws, unit.fan_in)
            in_mag = unit.in_magnitude() if state.needs_in_magnitude else None
            chosen = state.step(
                self.activations(i),
                unit.out_magnitude(),
                in_mag,
                uniform,
                skip_if_none=True,
                util_uniforms=util_uniforms,
            )
            replaced[unit.layer.name] = 0
            if chosen is None:
                continue
            order, mask, r = chosen
            n = int(r[0])
            units = order[0, :n]
            fhat = state.corrected_mean()[0, units] if self.bias_correction else None
            unit.replace(units, rows[0, :n], fhat, self.optimizer)
            state.reset(mask)
            replaced[unit.layer.name] = n
        return replaced

    def replacements(self) -> dict[str, int]:
        """{layer name: units replaced so far}."""
        return {
            unit.layer.name: int(state.replaced[0]) for unit, state in zip(self.layers, self.states)
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "layers": [state.state_dict() for state in self.states],
            "rng": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cbp_state, saved in zip(self.states, state["layers"]):
            cbp_state.load_state_dict(saved)
        for g, saved in zip(self.generators, state["rng"]):
            g.set_state(saved)
