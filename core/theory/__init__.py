"""The paper's theory as numerics (paper §2, §3, App. A.1-A.5; docs/theory.md).

Kernels: `hermite_coefficients`, `normalised_activation`, `kernel` (closed form, interpolant,
series or quadrature; `kernel_interpolant`), `decorrelation_strength` (zeta = 1 - c_1^2),
`frozen_probability`.
Bounds: `renyi2_rank`, `decorrelation_potential`, `apply_kernel`, the quartic gap and its bound
(Lemma A.1), the rank gain and its bound (Theorem 3.1), random correlation matrices.
Figures A.1-A.3: `write_figures` (`python -m core.theory figures --out DIR`).
Clone partitions (Theorem 2.1): `CloneStructure` (block-constant and equitable manifolds, their
projectors, distances, dimensions and exact symmetry directions).
Manifold stability (Def. A.2): `hessian_vector_product`, `lanczos`, `normal_hessian_spectrum`,
`escape_rate`, `required_steps`, `predicted_rate`, `stability_report`
(`python -m core.theory stability CKPT`).
"""

from core.theory.activations import KERNEL_ACTIVATIONS, Activation, resolve
from core.theory.bounds import (
    apply_kernel,
    correlation_path,
    decorrelation_potential,
    quartic_gap,
    quartic_gap_bound,
    random_correlation_matrix,
    rank_gain,
    rank_gain_bound,
    renyi2_rank,
)
from core.theory.figures import write_figures
from core.theory.gaussian import gauss_hermite, panel_rule
from core.theory.kernels import (
    decorrelation_strength,
    frozen_probability,
    hermite_coefficients,
    hermite_functions,
    kernel,
    kernel_interpolant,
    kernel_quadrature,
    kernel_series,
    normalised_activation,
    relu_kernel,
    sign_kernel,
)
from core.theory.manifold import SYMMETRY_FAMILIES, CloneStructure
from core.theory.report import stability_report
from core.theory.stability import (
    NormalSpectrum,
    escape_rate,
    hessian_vector_product,
    lanczos,
    model_loss,
    normal_hessian_spectrum,
    predicted_rate,
    required_steps,
    verdict,
)

__all__ = [
    "KERNEL_ACTIVATIONS",
    "SYMMETRY_FAMILIES",
    "Activation",
    "CloneStructure",
    "NormalSpectrum",
    "apply_kernel",
    "correlation_path",
    "decorrelation_potential",
    "decorrelation_strength",
    "escape_rate",
    "frozen_probability",
    "gauss_hermite",
    "hermite_coefficients",
    "hermite_functions",
    "hessian_vector_product",
    "kernel",
    "kernel_interpolant",
    "kernel_quadrature",
    "kernel_series",
    "lanczos",
    "model_loss",
    "normal_hessian_spectrum",
    "normalised_activation",
    "panel_rule",
    "predicted_rate",
    "quartic_gap",
    "quartic_gap_bound",
    "random_correlation_matrix",
    "rank_gain",
    "rank_gain_bound",
    "relu_kernel",
    "required_steps",
    "renyi2_rank",
    "resolve",
    "sign_kernel",
    "stability_report",
    "verdict",
    "write_figures",
]
