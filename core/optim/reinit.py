"""Re-initialising hidden units of a model's declared layers: the machinery CBP and ReDo share.

A model declares its layers of units (`core.models.Layer`): the module producing unit i (row /
output channel i of `incoming`), an optional per-unit norm, and the module reading the unit
(column i of `outgoing`, or the columns `outgoing_index[i]` behind a flatten). Everything here goes
through those declarations, so one implementation serves the MLP (with or without a norm), the CNN
(conv -> conv, conv -> linear through the flatten), the hidden channels inside the ResNet's blocks,
the ViT's MLP hidden units and the bit-flip learner. Statistics come as stacked
`(members, units)` tensors with one member, the layout the batched bit-flip ensemble uses for many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from core.models import Layer, activation_gain
from core.models.capture import unit_matrix
from core.optim.state import reset_optimizer_state


def uniform_rows(u: torch.Tensor, bound: float) -> torch.Tensor:
    """New incoming weights `U(-bound, bound)` from uniforms `u` in [0, 1): `(2u - 1) * bound`.

    Dohare et al. (2024): bound = gain(activation) * sqrt(3 / fan_in), the law of
    `nn.init.kaiming_uniform_`. Written once so the module and the batched paths agree bit for bit.
    """
    return (u * 2.0 - 1.0) * bound


class UnitLayer:
    """One declared layer of units, with the operations unit replacement needs."""

    def __init__(self, layer: Layer, normalised_consumer: bool = False) -> None:
        if not layer.has_units:
            raise ValueError(f"layer {layer.name!r} declares no incoming/outgoing modules")
        self.layer = layer
        weight = layer.incoming.weight
        self.units = weight.shape[0]
        self.fan_in = weight[0].numel()
        self.bound = activation_gain(layer.activation or "identity") * math.sqrt(3.0 / self.fan_in)
        out = layer.outgoing
        # The consumer's bias can absorb the unit's mean only where it reads the activation itself
        # (a Linear, not through pooling or a flatten) and is not followed by a norm (which would
        # subtract the shift again).
        self.bias_correctable = (
            out.weight.dim() == 2
            and layer.outgoing_index is None
            and out.bias is not None
            and not normalised_consumer
        )

    def activations(self, output: torch.Tensor) -> torch.Tensor:
        """(1, rows, units): the layer output by the flattening rule (rows = samples/positions)."""
        return unit_matrix(output.detach())[None]

    @torch.no_grad()
    def in_magnitude(self) -> torch.Tensor:
        """(1, units): mean |w| over each unit's incoming weights (bias excluded)."""
        return self.layer.incoming.weight.abs().flatten(1).mean(1)[None]

    @torch.no_grad()
    def out_magnitude(self) -> torch.Tensor:
        """(1, units): mean |w| over each unit's outgoing weights (all consumers, kernel taps and,
        behind a flatten, all of the unit's flattened positions)."""
        w = self.layer.outgoing.weight.abs()
        if self.layer.outgoing_index is not None:
            index = self.layer.outgoing_index.to(w.device)  # (units, positions)
            return w[:, index].mean(dim=(0, 2))[None]  # (out, units, positions) -> (1, units)
        return w.transpose(0, 1).flatten(1).mean(1)[None]  # (units, out * kernel) -> (1, units)

    def _outgoing_columns(self, units: torch.Tensor) -> tuple:
        if self.layer.outgoing_index is not None:
            cols = self.layer.outgoing_index.to(units.device)[units].flatten()
            return (slice(None), cols)
        return (slice(None), units)

    @torch.no_grad()
    def replace(
        self,
        units: torch.Tensor,
        uniforms: torch.Tensor,
        mean_activation: torch.Tensor | None,
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        """Re-initialise `units` (a 1-D index): incoming rows `uniform_rows(uniforms, bound)`,
        incoming bias 0, norm reset (weight 1, bias 0, running mean 0, running var 1), the
        consumer's bias += sum_i W_out[:, i] * mean_activation_i when given (only where
        `bias_correctable`), outgoing columns 0, and the optimizer's state of all of these zeroed
        (every per-element state tensor: momentum, Adam's moments, `ElementwiseAdam`'s steps).
        """
        layer = self.layer
        incoming, outgoing = layer.incoming, layer.outgoing
        rows = uniform_rows(uniforms, self.bound).to(incoming.weight)
        incoming.weight[units] = rows.view(len(units), *incoming.weight.shape[1:])
        touched: list[tuple[torch.Tensor, tuple | torch.Tensor]] = [(incoming.weight, units)]
        if incoming.bias is not None:
            incoming.bias[units] = 0
            touched.append((incoming.bias, units))
        if layer.norm is not None:
            for name, value in (("weight", 1), ("bias", 0), ("running_mean", 0)):
                tensor = getattr(layer.norm, name, None)
                if tensor is not None:
                    tensor[units] = value
                    if isinstance(tensor, nn.Parameter):
                        touched.append((tensor, units))
            if getattr(layer.norm, "running_var", None) is not None:
                layer.norm.running_var[units] = 1
        cols = self._outgoing_columns(units)
        if mean_activation is not None and self.bias_correctable:
            outgoing.bias += outgoing.weight[cols] @ mean_activation.to(outgoing.weight)
        outgoing.weight[cols] = 0
        touched.append((outgoing.weight, cols))
        if optimizer is not None:
            for param, index in touched:
                reset_optimizer_state(optimizer, param, index)


def unit_layer_names(model: nn.Module) -> list[str]:
    """The declared layers of `model` that can host unit replacement (CBP, ReDo)."""
    return [layer.name for layer in model.declared_layers() if layer.has_units]


class UnitReset:
    """Base of the replacement policies (CBP, ReDo): hooks, layers, per-layer random streams.

    Records, for every selected layer, the output of the last forward pass made in training mode
    (a forward hook on the layer's module); `step()` (after `optimizer.step()`) lets the policy
    pick units from those activations and re-initialises them. `layers` selects declared layers
    by name (None: every layer that can host replacement); a name that cannot is an error listing
    those that can. Each layer draws from its own generator, seeded at construction from
    `generator` (required: no hidden default stream) in layer order.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        generator: torch.Generator,
        layers: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"{type(self).__name__} needs an explicit torch.Generator (generator=...), e.g. "
                "torch.Generator().manual_seed(seed_for(seed, 'cbp'))"
            )
        self.optimizer = optimizer
        declared = model.declared_layers()
        hostable = [layer for layer in declared if layer.has_units]
        names = [layer.name for layer in hostable]
        if not hostable:
            raise ValueError(f"{type(model).__name__} declares no layers of replaceable units")
        if layers is not None:
            unknown = [name for name in layers if name not in names]
            if unknown or not layers:
                raise ValueError(
                    f"layers {list(layers)} cannot host unit replacement in "
                    f"{type(model).__name__}; valid: {', '.join(names)}"
                )
            hostable = [layer for layer in hostable if layer.name in layers]
        normalised = {id(layer.incoming) for layer in declared if layer.norm is not None}
        self.layers = [UnitLayer(layer, id(layer.outgoing) in normalised) for layer in hostable]
        self.generators = [
            torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator)))
            for _ in self.layers
        ]
        self._acts: dict[int, torch.Tensor] = {}
        self._handles = [
            unit.layer.module.register_forward_hook(self._hook(i))
            for i, unit in enumerate(self.layers)
        ]

    def _hook(self, i: int):
        def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if module.training:
                self._acts[i] = output.detach()

        return hook

    def activations(self, i: int) -> torch.Tensor:
        if i not in self._acts:
            raise RuntimeError("step() needs a forward pass in training mode since the last step")
        return self.layers[i].activations(self._acts[i])

    def remove(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
