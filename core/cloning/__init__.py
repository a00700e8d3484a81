"""Exact width expansion onto the cloning manifold, its checks and its geometry.

Public surface: `expand`, `compare`, `cloning_score`, `block_mean`, `normal_component`,
`manifold_distance`, `equitable_perturbation`, `lr_multipliers`, `param_groups`.
"""

from core.cloning.compare import cloning_score, compare
from core.cloning.expand import expand
from core.cloning.geometry import (
    block_mean,
    equitable_perturbation,
    lr_multipliers,
    manifold_distance,
    normal_component,
    param_groups,
)

__all__ = [
    "block_mean",
    "cloning_score",
    "compare",
    "equitable_perturbation",
    "expand",
    "lr_multipliers",
    "manifold_distance",
    "normal_component",
    "param_groups",
]
