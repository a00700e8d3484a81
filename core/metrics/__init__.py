"""Plasticity metrics on activation/gradient matrices, and the probe that measures a model.

Public surface:
- functions of a 2-D (samples x features) tensor H (and the gradient matrix G) returning a float,
  each named for exactly what it computes (formulas and references in docs/metrics.md):
  `dead_fraction`, `dormant_ratio`, `saturated_fraction`, `duplicate_fraction` (|Pearson|, both
  members), `duplicate_fraction_cosine` (the paper code's), `effective_rank` (Shannon, singular
  values), `effective_rank_cov` / `effective_rank_corr` (Shannon, covariance / correlation
  eigenvalues), `participation_ratio` / `participation_ratio_corr` (Renyi-2, covariance /
  correlation), `stable_rank` (classical), `numerical_rank`, `approximate_rank`,
  `approximate_rank_abs`,
  `non_gaussianity`, `mean_weight_magnitude`, and the per-unit activation statistics
  `mean_of_means`, `std_of_means`, `mean_of_stds`, `std_of_stds` (of `unit_mean_std`, the
  per-unit mean and std over rows); each also has `.tensor`, the same function returning a 0-d
  tensor on the input's device;
- `frozen_fraction(pre, activation, eps, fraction)` of the pre-activations (the activation's
  input), a float;
- `dormancy_scores` (D,): the per-unit ReDo score behind `dormant_ratio`, also used by
  `core.optim.ReDo`;
- `Probe`, `ProbeSpec` and `PRESETS` (`default`, `paper`, `paper_bitflip`, `dohare2024`);
  `ProbeSpec(diagnose=True)` adds the clone partition and frozen units of `core.diagnose` per
  layer (`core.metrics.partition`, the one definition both use).

Flatten a layer output into H with `core.models.capture.unit_matrix`; choose stratified probe
batches with `core.data.stratified_indices`.
"""

from core.metrics.presets import PRESETS
from core.metrics.probe import Probe, ProbeSpec
from core.metrics.ranks import (
    approximate_rank,
    approximate_rank_abs,
    effective_rank,
    effective_rank_corr,
    effective_rank_cov,
    numerical_rank,
    participation_ratio,
    participation_ratio_corr,
    stable_rank,
)
from core.metrics.units import (
    dead_fraction,
    dormancy_scores,
    dormant_ratio,
    duplicate_fraction,
    duplicate_fraction_cosine,
    frozen_fraction,
    mean_of_means,
    mean_of_stds,
    mean_weight_magnitude,
    non_gaussianity,
    saturated_fraction,
    std_of_means,
    std_of_stds,
    unit_mean_std,
)

__all__ = [
    "PRESETS",
    "Probe",
    "ProbeSpec",
    "approximate_rank",
    "approximate_rank_abs",
    "dead_fraction",
    "dormancy_scores",
    "dormant_ratio",
    "duplicate_fraction",
    "duplicate_fraction_cosine",
    "effective_rank",
    "effective_rank_corr",
    "effective_rank_cov",
    "frozen_fraction",
    "mean_of_means",
    "mean_of_stds",
    "mean_weight_magnitude",
    "non_gaussianity",
    "numerical_rank",
    "participation_ratio",
    "participation_ratio_corr",
    "saturated_fraction",
    "stable_rank",
    "std_of_means",
    "std_of_stds",
    "unit_mean_std",
]
