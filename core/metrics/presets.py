"""Named sets of metrics for the probe: which metrics, with which thresholds, on which rows.

A preset maps each metric's exact name (the key the probe reports, "<layer>/<name>") to how it is
computed from one layer's `LayerView` (core/metrics/probe.py) and to the name its source uses for
it, so that a number in the run record is always named for what it computes, and a source's own
name can still be looked up (`PRESETS["paper"]["participation_ratio"].source == "stable_rank"`).

- `default`: every metric of this package; saturation on per-sample gradients (batch-size free).
- `paper`: the paper's code (paper §B.1.2), continual and cloning runs, plus the frozen-unit rule
  of its proof-of-concept scripts.
- `paper_bitflip`: the paper's code with its bit-flip config's thresholds.
- `dohare2024`: Dohare et al. (2024)'s metrics, on all probe rows.
docs/metrics.md lists each source's formulas and what no preset can reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.metrics import ranks, units

if TYPE_CHECKING:
    from core.metrics.probe import LayerView

RANK_ROWS = 1024  # rows the paper's code subsamples for its rank metrics
PAPER_ZERO = 1e-9  # the paper's code reports a rank of 0 below this sum (effective rank, "stable")


@dataclass(frozen=True)
class Metric:
    """One metric of a preset, computed for every declared layer."""

    source: str  # the name the source (paper code, Dohare et al.) uses for it
    compute: Callable[[LayerView], torch.Tensor]  # the layer's view -> a 0-d tensor
    needs_grad: bool = False  # reads the layer's loss gradients
    needs_weight: bool = False  # reads the weight feeding the layer (skipped where there is none)
    needs_pre: bool = False  # reads the pre-activations (skipped for layers without activation)


def _dead(threshold: float, zero_tol: float, source: str = "dead_fraction") -> Metric:
    return Metric(source, lambda v: units.dead_fraction_of(v.zero_fractions(zero_tol), threshold))


def _dormant(tau: float, source: str) -> Metric:
    return Metric(source, lambda v: units.dormant_ratio_of(v.mean_abs(), tau))


def _saturated(rel_tol: float, min_fraction: float, per_sample: bool, source: str) -> Metric:
    def compute(v: LayerView) -> torch.Tensor:
        f = v.small_gradient_fractions(rel_tol, per_sample)
        return units.saturated_fraction_of(f, min_fraction)

    return Metric(source, compute, needs_grad=True)


def _frozen(eps: float, fraction: float, source: str) -> Metric:
    def compute(v: LayerView) -> torch.Tensor:
        return units.frozen_fraction_of(v.flat_slope_fractions(eps), fraction)

    return Metric(source, compute, needs_pre=True)


def _pearson(threshold: float) -> Metric:
    return Metric(
        "dup_fraction (POC)", lambda v: units.duplicate_fraction_of(v.moments(), threshold)
    )


def _cosine(threshold: float) -> Metric:
    return Metric(
        "dup_fraction", lambda v: units.duplicate_fraction_cosine_of(v.moments(), threshold)
    )


def _unit_statistics(ddof: int) -> dict[str, Metric]:
    """mean_of_means, std_of_means, mean_of_stds, std_of_stds (the paper code's own names), the
    spread across units with `ddof` (1: sample std; 0: the paper code's numpy `.std()`)."""
    names = ("mean_of_means", "std_of_means", "mean_of_stds", "std_of_stds")
    return {
        name: Metric(name, lambda v, name=name: v.unit_statistics(ddof)[name]) for name in names
    }


def _spectral(source: str, of: Callable, rows: int | None, kind: str = "raw", **kw) -> Metric:
    """A rank metric on the (fixed, subsampled) rows' spectrum, shared by the layer's ranks;
    kind: raw (H), centred (covariance) or standardised (correlation)."""
    return Metric(source, lambda v: of(v.spectrum(rows, kind), **kw))


def _paper_zero(metric: Metric, small: Callable[[torch.Tensor], torch.Tensor], kind: str) -> Metric:
    """`metric`, reported as 0 where `small(spectrum)` < PAPER_ZERO, as the paper's code does."""

    def compute(v: LayerView) -> torch.Tensor:
        value = metric.compute(v)
        return torch.where(small(v.spectrum(RANK_ROWS, kind)) < PAPER_ZERO, 0.0, value)

    return Metric(metric.source, compute)


def _numerical_rank(source: str, rows: int | None, rtol: float | None) -> Metric:
    """numerical_rank on the Gram spectrum where its tolerance lies above the Gram route's
    round-off floor, on the singular values otherwise (rtol 0: every non-zero one)."""

    def compute(v: LayerView) -> torch.Tensor:
        h = v.rows(rows)
        tol = ranks.default_rtol(h) if rtol is None else rtol
        gram_resolves = tol**2 > max(h.shape) * torch.finfo(torch.float64).eps
        return ranks.numerical_rank_of(v.spectrum(rows, "raw" if gram_resolves else "svd"), tol)

    return Metric(source, compute)


def _non_gaussianity(rows: int | None) -> Metric:
    return Metric("non_gaussianity", lambda v: units.non_gaussianity.tensor(v.rows(rows)))


_WEIGHT = Metric(
    "weight magnitude",
    lambda v: units.mean_weight_magnitude.tensor(v.weight),
    needs_weight=True,
)

_PAPER_EFFECTIVE_RANK = _paper_zero(
    _spectral("effective_rank", ranks.effective_rank_of, RANK_ROWS),
    lambda s2: s2.sqrt().sum(),  # sum of singular values
    "raw",
)
_PAPER_PARTICIPATION_RATIO = _paper_zero(
    _spectral("stable_rank", ranks.participation_ratio_of, RANK_ROWS, "centred"),
    lambda s2c: s2c.square().sum(),  # ||H_c^T H_c||_F^2
    "centred",
)

PRESETS: dict[str, Mapping[str, Metric]] = {
    "default": {
        "dead_fraction": _dead(0.95, 1e-7),
        "dormant_ratio": _dormant(0.025, "dormant ratio"),
        "frozen_fraction": _frozen(1e-4, 0.99, "frozen units (paper §2)"),
        "saturated_fraction": _saturated(0.05, 0.99, True, "saturated_frac"),
        "duplicate_fraction": _pearson(0.95),
        "duplicate_fraction_cosine": _cosine(0.95),
        **_unit_statistics(ddof=1),
        "effective_rank": _spectral("effective_rank", ranks.effective_rank_of, RANK_ROWS),
        "effective_rank_cov": _spectral(
            "effective rank (POC)", ranks.effective_rank_cov_of, RANK_ROWS, "centred"
        ),
        "effective_rank_corr": _spectral(
            "effective rank (correlation)", ranks.effective_rank_cov_of, RANK_ROWS, "standardised"
        ),
        "participation_ratio": _spectral(
            "stable_rank", ranks.participation_ratio_of, RANK_ROWS, "centred"
        ),
        "participation_ratio_corr": _spectral(
            "Renyi-2 rank (Theorem 3.1)", ranks.participation_ratio_of, RANK_ROWS, "standardised"
        ),
        "stable_rank": _spectral("stable rank (README)", ranks.stable_rank_of, RANK_ROWS),
        "numerical_rank": _numerical_rank(
            "matrix rank (torch.linalg.matrix_rank)", RANK_ROWS, None
        ),
        "approximate_rank": _spectral(
            "approximate rank", ranks.approximate_rank_of, RANK_ROWS, mass=0.99
        ),
        "non_gaussianity": _non_gaussianity(RANK_ROWS),
        "mean_weight_magnitude": _WEIGHT,
    },
    "paper": {
        "dead_fraction": _dead(0.95, 1e-7),
        "frozen_fraction": _frozen(1e-3, 0.95, "frozen (POC scripts)"),
        "duplicate_fraction_cosine": _cosine(0.95),
        **_unit_statistics(ddof=0),
        "saturated_fraction_batch_mean": _saturated(1e-4, 0.99, False, "saturated_frac"),
        "effective_rank": _PAPER_EFFECTIVE_RANK,
        "participation_ratio": _PAPER_PARTICIPATION_RATIO,
        "non_gaussianity": _non_gaussianity(1000),
    },
    "paper_bitflip": {
        "dead_fraction": _dead(0.95, 1e-7),
        "duplicate_fraction_cosine": _cosine(0.98),
        **_unit_statistics(ddof=0),
        "saturated_fraction_batch_mean": _saturated(0.05, 0.8, False, "saturated_frac"),
        "effective_rank": _PAPER_EFFECTIVE_RANK,
        "participation_ratio": _PAPER_PARTICIPATION_RATIO,
        "non_gaussianity": _non_gaussianity(1000),
    },
    "dohare2024": {
        "dormant_ratio": _dormant(0.0, "dead units (permuted MNIST)"),
        "dead_fraction": _dead(0.99, 0.0, source="dormant units (CIFAR)"),
        "effective_rank": _spectral("effective rank", ranks.effective_rank_of, None),
        "approximate_rank": _spectral(
            "approximate rank", ranks.approximate_rank_of, None, mass=0.99
        ),
        "approximate_rank_abs": _spectral(
            "stable rank (CIFAR, RL)", ranks.approximate_rank_abs_of, None, mass=0.99
        ),
        "numerical_rank": _numerical_rank("rank", None, 0.0),
        "mean_weight_magnitude": _WEIGHT,
    },
}
