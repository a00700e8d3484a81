"""Confidence intervals for the mean of per-seed values: pure functions on a 1-D array.

`t_interval`: the Student-t interval mean +- t_{1-a/2, n-1} * s / sqrt(n), with s the sample
standard deviation (ddof 1). `bootstrap_interval`: the percentile bootstrap of the mean, with an
explicit `numpy.random.Generator` (Efron & Tibshirani 1993, ch. 13); meant for n >= 20, where
the percentile interval's coverage is close to nominal.
With n = 1 neither interval exists: the bounds are NaN and `note` says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_BOOTSTRAP_N = 20  # below this the percentile bootstrap undercovers; use the t-interval


@dataclass(frozen=True)
class Interval:
    """Mean, sample std (ddof 1) and a two-sided interval of the mean of n values."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    method: str  # "t" or "bootstrap"
    note: str = ""  # why an interval is missing (NaN bounds), else ""


def _values(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D (one value per seed), got shape {x.shape}")
    return x


def t_interval(values: np.ndarray, confidence: float = 0.95) -> Interval:
    """mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n) of `values` (one per seed)."""
    x = _values(values)
    n = len(x)
    if n == 0:
        return Interval(0, np.nan, np.nan, np.nan, np.nan, "t", "no values")
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, np.nan, np.nan, np.nan, "t", "n=1: no interval from one seed")
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / np.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, "t")


def bootstrap_interval(
    values: np.ndarray,
    rng: np.random.Generator,
    confidence: float = 0.95,
    resamples: int = 10_000,
) -> Interval:
    """The percentile bootstrap interval of the mean: the (1-c)/2 and (1+c)/2 quantiles of the
    means of `resamples` resamples with replacement drawn from `rng`."""
    x = _values(values)
    n = len(x)
    if n < 2:
        base = t_interval(x, confidence)
        return Interval(n, base.mean, np.nan, np.nan, np.nan, "bootstrap", base.note)
    means = x[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    note = "" if n >= MIN_BOOTSTRAP_N else f"n={n} < {MIN_BOOTSTRAP_N}: bootstrap undercovers"
    return Interval(
        n, float(x.mean()), float(x.std(ddof=1)), float(low), float(high), "bootstrap", note
    )
