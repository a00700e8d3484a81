"""One forward and one backward of any nn.Module with every tensor the diagnosis reads recorded.

Sites: the input and the output of every module that owns parameters or is a measured layer, as
(rows, units) matrices by the probe's flattening rule (`core.models.capture.unit_matrix`:
(B, D); (B, C, H, W) -> rows = positions, units = channels; (B, T, D) -> rows = tokens), with the
loss gradients with respect to them. A module called several times contributes the rows of every
call. The model runs in the given mode on copies of its buffers (no BatchNorm statistic changes);
the inputs are made to require grad, so that even the first layer's input has errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from core.models.capture import unit_matrix


@dataclass
class Site:
    """The (rows, units) values and errors of one module's input or output."""

    values: list[torch.Tensor] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)  # graph tensors, for the gradients
    errors: list[torch.Tensor] = field(default_factory=list)

    def matrix(self) -> torch.Tensor:
        return torch.cat(self.values)

    def error_matrix(self) -> torch.Tensor | None:
        return torch.cat(self.errors) if self.errors else None


@dataclass
class Capture:
    """Sites keyed by (module path, "input" | "output"); the loss; the output module's path."""

    sites: dict[tuple[str, str], Site]
    loss: float
    output_module: str | None
    params: dict[str, torch.Tensor]
    param_grads: dict[str, torch.Tensor]


def _matrix(t: object) -> torch.Tensor | None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
        return None
    try:
        return unit_matrix(t)
    except ValueError:
        return None


def capture(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    paths: set[str],
) -> Capture:
    """Run `model` once on (inputs, targets), recording the sites of `paths` (module paths)."""
    sites: dict[tuple[str, str], Site] = {}
    outputs_by_id: dict[int, str] = {}

    def hook_for(path: str):
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            for kind, t in (("input", args[0] if args else None), ("output", output)):
                m = _matrix(t)
                if m is None:
                    continue
                site = sites.setdefault((path, kind), Site())
                site.values.append(m.detach())
                site.tensors.append(t)
            if isinstance(output, torch.Tensor):
                outputs_by_id[id(output)] = path

        return hook

    modules = dict(model.named_modules())
    handles = [modules[p].register_forward_hook(hook_for(p)) for p in sorted(paths)]
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    x = inputs.detach().clone().requires_grad_(inputs.is_floating_point())
    try:
        with torch.enable_grad():
            out = functional_call(model, {**buffers, **leaves}, (x,))
            loss = loss_fn(out, targets)
            graph = [(key, i, t) for key, s in sites.items() for i, t in enumerate(s.tensors)]
            wanted = [t for _, _, t in graph if t.requires_grad]
            grads = torch.autograd.grad(
                loss, wanted + list(leaves.values()), allow_unused=True, materialize_grads=True
            )
    finally:
        for handle in handles:
            handle.remove()
    it = iter(grads[: len(wanted)])
    for key, _, t in graph:
        site = sites[key]
        g = next(it) if t.requires_grad else torch.zeros_like(t)
        site.errors.append(unit_matrix(g.detach()))
        site.tensors = []
    param_grads = dict(zip(leaves, (g.detach() for g in grads[len(wanted) :])))
    return Capture(
        sites=sites,
        loss=float(loss.detach()),
        output_module=outputs_by_id.get(id(out)),
        params={name: p.detach() for name, p in model.named_parameters()},
        param_grads=param_grads,
    )
