"""The paper's theory as numerics (paper §2, §3, App. A.1-A.5; docs/theory.md).

What other packages use is listed here; import the rest from its module (docs/theory.md):
- `kernels`: `hermite_coefficients`, `normalised_activation`, `kernel` (closed form, interpolant,
  series or quadrature; `kernel_interpolant`), `decorrelation_strength` (zeta = 1 - c_1^2),
  `frozen_probability`; `activations.KERNEL_ACTIVATIONS`, the named activations;
- `bounds`: `renyi2_rank`, `decorrelation_potential`, `apply_kernel`, the quartic gap and its bound
  (Lemma A.1), the rank gain and its bound (Theorem 3.1), random correlation matrices;
- `figures`: Figures A.1-A.3, `write_figures` (`python -m core.theory figures --out DIR`);
- `manifold`: clone partitions (Theorem 2.1), `CloneStructure` (block-constant and equitable
  manifolds, their projectors, distances, dimensions and exact symmetry directions);
- `stability`: manifold stability (Def. A.2), `hessian_vector_product`, `lanczos`,
  `normal_hessian_spectrum`, `escape_rate`, `required_steps`, `predicted_rate`,
  `analyse_stability`; `report.stability_report` (`python -m core.theory stability CKPT`).
"""

from core.theory.activations import KERNEL_ACTIVATIONS
from core.theory.figures import write_figures
from core.theory.kernels import decorrelation_strength, kernel
from core.theory.manifold import CloneStructure
from core.theory.report import stability_report
from core.theory.stability import normal_hessian_spectrum

__all__ = [
    "KERNEL_ACTIVATIONS",
    "CloneStructure",
    "decorrelation_strength",
    "kernel",
    "normal_hessian_spectrum",
    "stability_report",
    "write_figures",
]
