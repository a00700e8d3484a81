"""The one builder from specs to objects: the optimizer of an `OptimizerSpec`, and the
interventions of a config's `cbp`, `redo` and `shrink_perturb` specs (L2 is the optimizer's
`weight_decay`), so every experiment gets the same thing from the same keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from core.optim import ContinualBackprop, NoisySGD, ReDo, ShrinkPerturb
from core.run.seeds import seed_for
from core.run.specs import CBPSpec, OptimizerSpec, ReDoSpec, ShrinkPerturbSpec


def intervention_streams(
    seed: int, device: torch.device | str, *index: int
) -> dict[str, torch.Generator]:
    """The generators `build_interventions` takes: "cbp" and "redo" on the CPU (they seed one
    stream per layer from it), "shrink_perturb" on the parameters' `device`; each seeded
    `seed_for(seed, <name>, *index)`."""
    return {
        "cbp": torch.Generator().manual_seed(seed_for(seed, "cbp", *index)),
        "redo": torch.Generator().manual_seed(seed_for(seed, "redo", *index)),
        "shrink_perturb": torch.Generator(device).manual_seed(
            seed_for(seed, "shrink_perturb", *index)
        ),
    }


def build_optimizer(
    spec: OptimizerSpec, params: Iterable[Any], generator: torch.Generator | None = None
) -> torch.optim.Optimizer:
    """The optimizer of `spec` over `params` (tensors, or parameter groups with their own lr).

    `generator` draws noisy SGD's noise and must be given for `noisy_sgd`.
    """
    common = {"lr": spec.lr, "weight_decay": spec.weight_decay}
    if spec.name == "adam":
        from core.optim import ElementwiseAdam

        adam = ElementwiseAdam if spec.adam_step == "element" else torch.optim.Adam
        return adam(params, betas=spec.betas, eps=spec.eps, **common)
    if spec.name == "sgd":
        return torch.optim.SGD(params, momentum=spec.momentum, **common)
    if generator is None:
        raise ValueError("noisy_sgd needs a torch.Generator for its noise")
    noise = {"sigma0": spec.sigma0, "decay": spec.decay, "generator": generator}
    return NoisySGD(params, momentum=spec.momentum, **noise, **common)


class Interventions:
    """The enabled interventions of one model, run in order CBP, ReDo, shrink-and-perturb by
    `step()` after every optimizer step.

    `step()` returns `{layer: units}` re-initialised this step (CBP's and ReDo's together); the
    counts per intervention accumulate in Python ints (the interventions count on the host
    already, so this adds no device synchronisation) until `take_counts()` returns them as rows
    `<layer>/cbp_replaced`, `<layer>/redo_reset` and resets them.
    """

    def __init__(
        self,
        cbp: ContinualBackprop | None = None,
        redo: ReDo | None = None,
        shrink_perturb: ShrinkPerturb | None = None,
    ) -> None:
        self.cbp, self.redo, self.shrink_perturb = cbp, redo, shrink_perturb
        self._units = {"cbp_replaced": cbp, "redo_reset": redo}
        self.counts: dict[str, int] = {}

    def step(self) -> dict[str, int]:
        """Run every enabled intervention once; the units re-initialised per layer."""
        units: dict[str, int] = {}
        for metric, part in self._units.items():
            if part is None:
                continue
            for layer, n in part.step().items():
                units[layer] = units.get(layer, 0) + n
                key = f"{layer}/{metric}"
                self.counts[key] = self.counts.get(key, 0) + n
        if self.shrink_perturb is not None:
            self.shrink_perturb.step()
        return units

    def take_counts(self) -> dict[str, float]:
        """The counts since the last call (every layer of every unit intervention, zeros too)."""
        rows = {}
        for metric, part in self._units.items():
            if part is not None:
                for layer in (unit.layer.name for unit in part.layers):
                    rows[f"{layer}/{metric}"] = float(self.counts.get(f"{layer}/{metric}", 0))
        self.counts = {}
        return rows

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"counts": dict(self.counts)}
        for name in ("cbp", "redo"):
            part = getattr(self, name)
            if part is not None:
                state[name] = part.state_dict()
        if self.shrink_perturb is not None and self.shrink_perturb.generator is not None:
            state["shrink_perturb"] = self.shrink_perturb.generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = dict(state["counts"])
        for name in ("cbp", "redo"):
            part = getattr(self, name)
            if part is not None:
                part.load_state_dict(state[name])
        if self.shrink_perturb is not None and self.shrink_perturb.generator is not None:
            self.shrink_perturb.generator.set_state(state["shrink_perturb"])


def _options(spec: Any) -> dict[str, Any]:
    """A spec's fields but `enabled`: the keyword arguments of the intervention it configures."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "enabled"}


def build_interventions(
    cfg: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
) -> Interventions:
    """The interventions `cfg.cbp`, `cfg.redo`, `cfg.shrink_perturb` enable on `model`, each
    drawing from `generators[<its name>]` (`intervention_streams`)."""
    cbp: CBPSpec = cfg.cbp
    redo: ReDoSpec = cfg.redo
    sp: ShrinkPerturbSpec = cfg.shrink_perturb
    return Interventions(
        ContinualBackprop(model, optimizer, **_options(cbp), generator=generators["cbp"])
        if cbp.enabled
        else None,
        ReDo(model, optimizer, **_options(redo), generator=generators["redo"])
        if redo.enabled
        else None,
        ShrinkPerturb(model.parameters(), **_options(sp), generator=generators["shrink_perturb"])
        if sp.enabled
        else None,
    )
