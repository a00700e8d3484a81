"""Optimizers and plasticity interventions: noisy SGD, Adam with per-element steps, Continual
Backprop, ReDo, shrink-and-perturb / L2, and the one helper that resets a base optimizer's
per-element state.

Public: `NoisySGD` (+ `noise_size`), `ElementwiseAdam` (+ `elementwise_adam_step`, its update as a
function), `ContinualBackprop`, `CBPState` (the CBP algorithm on stacked statistics, used by the
batched bit-flip ensemble), `UTIL_TYPES`, `ROUNDINGS`, `max_replacements`, `ReDo`,
`ShrinkPerturb`, `reset_optimizer_state`, `uniform_rows` (the re-initialisation law) and
`unit_layer_names` (the layers of a model that can host CBP / ReDo).
"""

from core.optim.cbp import ROUNDINGS, UTIL_TYPES, CBPState, ContinualBackprop, max_replacements
from core.optim.elementwise_adam import ElementwiseAdam, elementwise_adam_step
from core.optim.noisy_sgd import NoisySGD, noise_size
from core.optim.redo import ReDo
from core.optim.reinit import uniform_rows, unit_layer_names
from core.optim.shrink_perturb import ShrinkPerturb
from core.optim.state import reset_optimizer_state

__all__ = [
    "ROUNDINGS",
    "UTIL_TYPES",
    "CBPState",
    "ContinualBackprop",
    "ElementwiseAdam",
    "NoisySGD",
    "ReDo",
    "ShrinkPerturb",
    "elementwise_adam_step",
    "max_replacements",
    "noise_size",
    "reset_optimizer_state",
    "uniform_rows",
    "unit_layer_names",
]
