"""The presets compute what their sources compute: the paper's numbers on a fixed matrix."""

import math

import pytest
import torch

from core.metrics import PRESETS
from core.metrics.probe import LayerView

# Columns a = (1,0,1,0), b = 0 (dead), c = (3,0,3,1); G is the gradient of the batch-mean loss.
H = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
G = torch.tensor([[1e-6, 0.0, 1e-3], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0]])


def _view(h, g, batch_size, pre=None, activation=None):
    return LayerView(h, g, batch_size, None, lambda k: None, pre=pre, activation=activation)


def _entropy_rank(weights):
    p = [w / sum(weights) for w in weights]
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


def _std(values, ddof):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - ddof))


def test_paper_preset_reproduces_the_paper_formulas():
    view = _view(H, G, batch_size=4, pre=H - 0.5, activation="relu")
    got = {name: float(metric.compute(view)) for name, metric in PRESETS["paper"].items()}
    # frozen (POC rule, relu' < 1e-3 on >= 95% of rows): pre = H - 1/2 is <= 0 on 2/4 rows of
    # a, 4/4 of b, 1/4 of c: b only.
    # §2.1: z = (0.5, 1, 0): only b has more than 95% of |h| < 1e-7.
    # §2.2: cos(a, c) = 6 / sqrt(2 * 19) = 0.973 > 0.95, lower index only: a.
    # §2.3: mu = (0.5, 1e-12, 1.75); r_a = 2e-6 and r_b = 0 on all rows, r_c > 1e-4 on 1 of 4.
    # §2.4: H^T H on (a, c) = [[2, 6], [6, 19]]: sigma^2 = (21 +- sqrt(433)) / 2, and sigma_b = 0.
    sigma = [math.sqrt((21 + math.sqrt(433)) / 2), math.sqrt((21 - math.sqrt(433)) / 2)]
    # §2.5: centred a_c = (.5,-.5,.5,-.5), c_c = (1.25,-1.75,1.25,-.75):
    # C = [[1, 2.5], [2.5, 6.75]],
    # (tr C)^2 / ||C||_F^2 = 7.75^2 / (1 + 2 * 6.25 + 6.75^2).
    # §2.8: Shapiro-Wilk, n = 4 (Royston's a_3, a_4); sorted a = (0,0,1,1): W = (a_3 + a_4)^2;
    # b constant: score 1; sorted c = (0,1,3,3): W = (2 a_3 + 3 a_4)^2 / 6.75.
    a3, a4 = 0.16633641006923108, 0.687264285908471
    w_a, w_c = (a3 + a4) ** 2, (2 * a3 + 3 * a4) ** 2 / 6.75
    # §2.9: unit means (.5, 0, 1.75); sample stds sqrt(1/3), 0, sqrt(6.75 / 3) = 1.5; their
    # spread across the 3 units is numpy's .std(), without Bessel's correction.
    stds = [math.sqrt(1 / 3), 0.0, 1.5]
    expected = {
        "dead_fraction": 1 / 3,
        "frozen_fraction": 1 / 3,
        "duplicate_fraction_cosine": 1 / 3,
        "saturated_fraction_batch_mean": 2 / 3,
        "effective_rank": _entropy_rank(sigma),
        "participation_ratio": 7.75**2 / (1 + 2 * 6.25 + 6.75**2),
        "non_gaussianity": ((1 - w_a) + 1 + (1 - w_c)) / 3,
        "mean_of_means": 0.75,
        "std_of_means": math.sqrt((0.25**2 + 0.75**2 + 1.0**2) / 3),
        "mean_of_stds": sum(stds) / 3,
        "std_of_stds": _std(stds, ddof=0),
    }
    assert got == pytest.approx(expected, rel=1e-6)


def test_paper_source_names():
    sources = {name: metric.source for name, metric in PRESETS["paper"].items()}
    assert sources["participation_ratio"] == "stable_rank"  # what the paper's code calls it
    assert sources["duplicate_fraction_cosine"] == "dup_fraction"
    assert sources["saturated_fraction_batch_mean"] == "saturated_frac"
    assert PRESETS["dohare2024"]["approximate_rank_abs"].source.startswith("stable rank")
    for preset in ("default", "paper", "paper_bitflip"):
        for name in ("mean_of_means", "std_of_means", "mean_of_stds", "std_of_stds"):
            assert PRESETS[preset][name].source == name  # the paper code's own names (§2.9)


def test_default_saturation_equals_the_papers_at_its_probe_size():
    """Per-sample gradients with rel_tol 0.05 == batch-mean gradients with 1e-4 at N = 500."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 64, generator=g, dtype=torch.float64).relu()
    per_sample = torch.randn(500, 64, generator=g, dtype=torch.float64) * torch.logspace(
        -4, 0, 64, dtype=torch.float64
    )
    view = _view(h, per_sample / 500, batch_size=500)
    ours = float(PRESETS["default"]["saturated_fraction"].compute(view))
    papers = float(PRESETS["paper"]["saturated_fraction_batch_mean"].compute(view))
    assert 0 < ours < 1
    assert ours == papers


def test_dohare_preset_by_hand():
    view = _view(H, None, batch_size=4)
    got = {
        name: float(metric.compute(view))
        for name, metric in PRESETS["dohare2024"].items()
        if not metric.needs_weight
    }
    sigma = [math.sqrt((21 + math.sqrt(433)) / 2), math.sqrt((21 - math.sqrt(433)) / 2)]
    share = sigma[0] ** 2 / sum(s**2 for s in sigma)  # 0.9952: above 0.99 with one value
    assert share > 0.99 and sigma[0] / sum(sigma) < 0.99
    assert got == pytest.approx(
        {
            "dormant_ratio": 1 / 3,  # b is zero on every row
            "dead_fraction": 1 / 3,  # non-zero on fewer than 1% of rows: b only
            "effective_rank": _entropy_rank(sigma),
            "approximate_rank": 1,
            "approximate_rank_abs": 2,
            "numerical_rank": 2,
        },
        rel=1e-6,
    )


def test_dohare_rank_counts_rounding_noise_and_default_rank_is_matrix_rank():
    """A float32 product of rank 70 (500 x 100): Dohare et al.'s code counts the non-zero
    singular values of torch.linalg.svdvals, which its rounding noise makes all 100; the
    default preset's numerical_rank is torch.linalg.matrix_rank's answer, 70."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 70, generator=g) @ torch.randn(70, 100, generator=g)
    view = LayerView(h, None, 500, None, lambda k: None)
    dohare = float(PRESETS["dohare2024"]["numerical_rank"].compute(view))
    assert dohare == int(torch.count_nonzero(torch.linalg.svdvals(h))) == 100
    ours = float(PRESETS["default"]["numerical_rank"].compute(view))
    assert ours == int(torch.linalg.matrix_rank(h)) == 70
    assert "matrix_rank" in PRESETS["default"]["numerical_rank"].source


def test_paper_preset_reports_zero_ranks_below_its_absolute_cutoffs():
    """The paper's code returns 0 when sum sigma < 1e-9 (effective rank) or ||H_c^T H_c||_F^2 <
    1e-9 (its "stable rank"); the default preset keeps the scale-free values."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 5, generator=g, dtype=torch.float64)
    tiny = h * 1e-5  # ||H_c^T H_c||_F^2 ~ 40^2 * 5 * 1e-20: below; sum sigma ~ 5 * 6e-5: above
    views = {"h": _view(h, None, 40), "tiny": _view(tiny, None, 40)}
    paper, default = PRESETS["paper"], PRESETS["default"]
    pr_h = float(default["participation_ratio"].compute(views["h"]))
    assert float(paper["participation_ratio"].compute(views["h"])) == pytest.approx(pr_h)
    assert float(default["participation_ratio"].compute(views["tiny"])) == pytest.approx(pr_h)
    assert float(paper["participation_ratio"].compute(views["tiny"])) == 0.0
    assert float(paper["effective_rank"].compute(views["tiny"])) > 1.0
    assert float(paper["effective_rank"].compute(_view(h * 1e-12, None, 40))) == 0.0


def test_unit_spreads_are_numpys_std_in_the_paper_presets():
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(2)
    h = torch.randn(30, 7, generator=g, dtype=torch.float64).exp()
    view = _view(h, None, 30)
    means, stds = h.numpy().mean(axis=0), h.numpy().std(axis=0, ddof=1)  # per unit: torch .std
    for preset in ("paper", "paper_bitflip"):
        got = PRESETS[preset]
        assert float(got["std_of_means"].compute(view)) == pytest.approx(np.std(means), rel=1e-12)
        assert float(got["std_of_stds"].compute(view)) == pytest.approx(np.std(stds), rel=1e-12)
    default = PRESETS["default"]
    assert float(default["std_of_means"].compute(view)) == pytest.approx(
        np.std(means, ddof=1), rel=1e-12
    )


def test_presets_hold_the_frozen_and_correlation_metrics():
    assert {"frozen_fraction", "participation_ratio_corr", "effective_rank_corr"} <= set(
        PRESETS["default"]
    )
    assert "frozen_fraction" in PRESETS["paper"]
    assert PRESETS["paper"]["frozen_fraction"].needs_pre
