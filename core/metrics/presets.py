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
    return Metric(
        source, lambda v: units.dead_fraction.tensor(v.h, threshold=threshold, zero_tol=zero_tol)
    )


def _saturated(rel_tol: float, min_fraction: float, per_sample: bool, source: str) -> Metric:
    def compute(v: LayerView) -> torch.Tensor:
        g = v.g_per_sample if per_sample else v.g_batch_mean
        return units.saturated_fraction.tensor(v.h, g, rel_tol=rel_tol, min_fraction=min_fraction)

    return Metric(source, compute, needs_grad=True)


def _cosine(threshold: float) -> Metric:
    return Metric(
        "dup_fraction", lambda v: units.duplicate_fraction_cosine.tensor(v.h, threshold=threshold)
    )


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
        "dormant_ratio": Metric("dormant ratio", lambda v: units.dormant_ratio.tensor(v.h)),
        "saturated_fraction": _saturated(0.05, 0.99, True, "saturated_frac"),
        "duplicate_fraction": Metric(
            "dup_fraction (POC)", lambda v: units.duplicate_fraction.tensor(v.h, threshold=0.95)
        ),
        "duplicate_fraction_cosine": _cosine(0.95),
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
        "saturated_fraction_batch_mean": _saturated(0.05, 0.8, False, "saturated_frac"),
        "effective_rank": _spectral("effective_rank", ranks.effective_rank_of, RANK_ROWS),
        "participation_ratio": _spectral(
            "stable_rank", ranks.participation_ratio_of, RANK_ROWS, centred=True
        ),
        "non_gaussianity": _non_gaussianity(1000),
    },
    "dohare2024": {
        "dormant_ratio": Metric(
            "dead units (permuted MNIST)", lambda v: units.dormant_ratio.tensor(v.h, tau=0.0)
        ),
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
