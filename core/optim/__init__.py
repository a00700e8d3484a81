"""Optimizers and plasticity interventions: noisy SGD, Continual Backprop, ReDo,
shrink-and-perturb / L2, and the one helper that resets a base optimizer's per-element state.

Public: `NoisySGD`, `ContinualBackprop`, `CBPState` (the CBP algorithm on stacked statistics, used
by the batched bit-flip ensemble), `ReDo`, `ShrinkPerturb`, `reset_optimizer_state`.
"""

from core.optim.cbp import ROUNDINGS, UTIL_TYPES, CBPState, ContinualBackprop, max_replacements
from core.optim.noisy_sgd import NoisySGD, noise_size
from core.optim.redo import ReDo, dormancy_scores
from core.optim.shrink_perturb import ShrinkPerturb
from core.optim.state import reset_optimizer_state
from core.optim.units import uniform_rows

__all__ = [
    "ROUNDINGS",
    "UTIL_TYPES",
    "CBPState",
    "ContinualBackprop",
    "NoisySGD",
    "ReDo",
    "ShrinkPerturb",
    "dormancy_scores",
    "max_replacements",
    "noise_size",
    "reset_optimizer_state",
    "uniform_rows",
]
