"""Diagnose loss of plasticity in any nn.Module (paper §2 Theorem 2.1, App. A.5; docs/diagnose.md).

`diagnose(model, inputs, targets, loss_fn, layers=None) -> Diagnosis`: frozen, dead and cloned units
per layer (clones discovered from forward values and back-propagated errors), the distance of the
weights to the induced cloning manifold and their equitability, its dimension, and the stability
verdict of Def. A.2 on the normal Hessian with the exact symmetries removed.
`python -m core.diagnose` runs it on a run record's checkpoint or a user's model.
"""

from core.diagnose.diagnosis import (
    Diagnosis,
    LayerDiagnosis,
    ManifoldDiagnosis,
    StabilityDiagnosis,
    diagnose,
)
from core.metrics.partition import clone_blocks, default_tolerance

__all__ = [
    "Diagnosis",
    "LayerDiagnosis",
    "ManifoldDiagnosis",
    "StabilityDiagnosis",
    "clone_blocks",
    "default_tolerance",
    "diagnose",
]
