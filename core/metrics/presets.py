"""Named sets of metrics for the probe: which metrics, with which thresholds, on which rows.

A preset maps each metric's exact name (the key the probe reports, "<layer>/<name>") to how it is
computed from one layer's `LayerView` (core/metrics/probe.py) and to the name its source uses for
it, so that a number in the run record is always named for what it computes, and a source's own
name can still be looked up (`PRESETS["paper"]["participation_ratio"].source == "stable_rank"`).

- `default`: every metric of this package; saturation on per-sample gradients (batch-size free).
- `paper`: the paper's code (paper_spec §2), continual and cloning runs.
- `paper_bitflip`: the paper's code with its bit-flip config's thresholds (paper_spec §2.2-2.3).
- `dohare2024`: Dohare et al. (2024)'s metrics (cbp_bitflip_spec §d), on all probe rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.metrics import ranks, units

if TYPE_CHECKING:
    from core.metrics.probe import LayerView

RANK_ROWS = 1024  # rows the paper's code subsamples for its rank metrics (paper_spec §2.4)


@dataclass(frozen=True)
class Metric:
    """One metric of a preset, computed for every declared layer."""

    source: str  # the name the source (paper code, Dohare et al.) uses for it
    compute: Callable[[LayerView], torch.Tensor]  # the layer's view -> a 0-d tensor
    needs_grad: bool = False  # reads the layer's loss gradients
    needs_weight: bool = False  # reads the weight feeding the layer (skipped where there is none)


def _dead(threshold: float, zero_tol: float, source: str = "dead_fraction") -> Metric:
    return Metric(source, lambda v: units.dead_fraction_of(v.zero_fractions(zero_tol), threshold))


def _dormant(tau: float, source: str) -> Metric:
    return Metric(source, lambda v: units.dormant_ratio_of(v.mean_abs(), tau))


def _saturated(rel_tol: float, min_fraction: float, per_sample: bool, source: str) -> Metric:
    def compute(v: LayerView) -> torch.Tensor:
        f = v.small_gradient_fractions(rel_tol, per_sample)
        return units.saturated_fraction_of(f, min_fraction)

    return Metric(source, compute, needs_grad=True)


def _pearson(threshold: float) -> Metric:
    return Metric(
        "dup_fraction (POC)", lambda v: units.duplicate_fraction_of(v.moments(), threshold)
    )


def _cosine(threshold: float) -> Metric:
    return Metric(
        "dup_fraction", lambda v: units.duplicate_fraction_cosine_of(v.moments(), threshold)
    )


def _unit_statistics() -> dict[str, Metric]:
    """mean_of_means, std_of_means, mean_of_stds, std_of_stds: the paper code's names (§2.9)."""
    names = ("mean_of_means", "std_of_means", "mean_of_stds", "std_of_stds")
    return {name: Metric(name, lambda v, name=name: v.unit_statistics()[name]) for name in names}


def _spectral(source: str, of: Callable, rows: int | None, centred: bool = False, **kw) -> Metric:
    """A rank metric on the (fixed, subsampled) rows' spectrum, shared by the layer's ranks."""
    if centred:
        return Metric(source, lambda v: of(v.centred_spectrum(rows), **kw))
    return Metric(source, lambda v: of(v.spectrum(rows), **kw))


def _numerical_rank(source: str, rows: int | None, rtol: float | None) -> Metric:
    def compute(v: LayerView) -> torch.Tensor:
        tol = ranks.default_rtol(v.rows(rows)) if rtol is None else rtol
        return ranks.numerical_rank_of(v.spectrum(rows), tol)

    return Metric(source, compute)


def _non_gaussianity(rows: int | None) -> Metric:
    return Metric("non_gaussianity", lambda v: units.non_gaussianity.tensor(v.rows(rows)))


_WEIGHT = Metric(
    "weight magnitude",
    lambda v: units.mean_weight_magnitude.tensor(v.weight),
    needs_weight=True,
)

PRESETS: dict[str, Mapping[str, Metric]] = {
    "default": {
        "dead_fraction": _dead(0.95, 1e-7),
        "dormant_ratio": _dormant(0.025, "dormant ratio"),
        "saturated_fraction": _saturated(0.05, 0.99, True, "saturated_frac"),
        "duplicate_fraction": _pearson(0.95),
        "duplicate_fraction_cosine": _cosine(0.95),
        **_unit_statistics(),
        "effective_rank": _spectral("effective_rank", ranks.effective_rank_of, RANK_ROWS),
        "effective_rank_cov": _spectral(
            "effective rank (theory)", ranks.effective_rank_cov_of, RANK_ROWS, centred=True
        ),
        "participation_ratio": _spectral(
            "stable_rank", ranks.participation_ratio_of, RANK_ROWS, centred=True
        ),
        "stable_rank": _spectral("stable rank (README)", ranks.stable_rank_of, RANK_ROWS),
        "numerical_rank": _numerical_rank("hard rank", RANK_ROWS, None),
        "approximate_rank": _spectral(
            "approximate rank", ranks.approximate_rank_of, RANK_ROWS, mass=0.99
        ),
        "non_gaussianity": _non_gaussianity(RANK_ROWS),
        "mean_weight_magnitude": _WEIGHT,
    },
    "paper": {
        "dead_fraction": _dead(0.95, 1e-7),
        "duplicate_fraction_cosine": _cosine(0.95),
        **_unit_statistics(),
        "saturated_fraction_batch_mean": _saturated(1e-4, 0.99, False, "saturated_frac"),
        "effective_rank": _spectral("effective_rank", ranks.effective_rank_of, RANK_ROWS),
        "participation_ratio": _spectral(
            "stable_rank", ranks.participation_ratio_of, RANK_ROWS, centred=True
        ),
        "non_gaussianity": _non_gaussianity(1000),
    },
    "paper_bitflip": {
        "dead_fraction": _dead(0.95, 1e-7),
        "duplicate_fraction_cosine": _cosine(0.98),
        **_unit_statistics(),
        "saturated_fraction_batch_mean": _saturated(0.05, 0.8, False, "saturated_frac"),
        "effective_rank": _spectral("effective_rank", ranks.effective_rank_of, RANK_ROWS),
        "participation_ratio": _spectral(
            "stable_rank", ranks.participation_ratio_of, RANK_ROWS, centred=True
        ),
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
