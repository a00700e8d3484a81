"""Per-unit metrics on matrices whose answers are known by hand."""

import pytest
import torch

from core.metrics import (
    dead_fraction,
    dormant_ratio,
    duplicate_fraction,
    duplicate_fraction_cosine,
    mean_weight_magnitude,
    non_gaussianity,
    saturated_fraction,
)
from core.metrics.units import shapiro_wilk_coefficients


def _gaussian(rows, cols, seed):
    return torch.randn(
        rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_k_duplicated_columns(k):
    h = _gaussian(200, 16, k)
    h[:, 16 - k :] = 2.0 * h[:, :k] + 1.0  # k pairs (j, 16 - k + j), positive affine copies
    assert duplicate_fraction(h, threshold=0.95) == pytest.approx(2 * k / 16)
    assert duplicate_fraction_cosine(h, threshold=0.95) < 2 * k / 16  # one member per pair
    exact = h.clone()
    exact[:, 16 - k :] = exact[:, :k]  # exact copies: cosine 1, the lower index counts only
    assert duplicate_fraction_cosine(exact, threshold=0.95) == pytest.approx(k / 16)


def test_duplicates_sign_and_constant_columns():
    h = _gaussian(100, 4, 0)
    h[:, 1] = -h[:, 0]  # anti-correlated: |Pearson| counts both, the paper's cosine counts none
    h[:, 2] = 0.0
    h[:, 3] = 0.0  # two identical constant (dead) columns: no correlation, never duplicates
    assert duplicate_fraction(h) == pytest.approx(2 / 4)
    assert duplicate_fraction_cosine(h) == 0.0


def test_cosine_duplicates_follow_the_paper_formula():
    # Columns a = (1,0,1,0), c = (3,0,3,1): cos(a, c) = 6 / (sqrt(2) sqrt(19)) = 0.973;
    # centred: a_c = (.5,-.5,.5,-.5), c_c = (1.25,-1.75,1.25,-.75): rho = 2.5 / sqrt(6.75) = 0.962.
    h = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    assert duplicate_fraction_cosine(h, threshold=0.95) == pytest.approx(1 / 3)
    assert duplicate_fraction_cosine(h, threshold=0.975) == 0.0
    assert duplicate_fraction(h, threshold=0.95) == pytest.approx(2 / 3)
    assert duplicate_fraction(h, threshold=0.965) == 0.0


def test_dead_fraction():
    h = _gaussian(100, 5, 1).abs() + 1.0
    h[:, 0] = 0.0  # all zero: dead
    h[:95, 1] = 0.0  # exactly 95% zero: not dead (z > 0.95 is strict)
    h[:96, 2] = 5e-8  # 96% below the 1e-7 tolerance: dead
    h[:96, 3] = 5e-8
    assert dead_fraction(h) == pytest.approx(3 / 5)
    assert dead_fraction(h, threshold=0.94) == pytest.approx(4 / 5)
    assert dead_fraction(h, zero_tol=0.0, threshold=0.94) == pytest.approx(2 / 5)  # exact zeros
    assert dormant_ratio(h, tau=0.0) == pytest.approx(1 / 5)  # exactly zero on every row


def test_dormant_ratio_by_hand():
    # mean |h| per unit: 1, 1, 1, 0.05 -> layer mean 0.7625, scores 1.311 x3 and 0.0656.
    h = torch.tensor([[1.0, -1.0, 2.0, 0.1], [-1.0, 1.0, 0.0, 0.0]])
    assert dormant_ratio(h, tau=0.1) == pytest.approx(1 / 4)
    assert dormant_ratio(h, tau=0.025) == 0.0
    assert dormant_ratio(torch.zeros(3, 2)) == 1.0


def test_saturated_fraction_by_hand():
    h = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    g = torch.tensor([[1e-6, 0.0, 1e-3], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0]])
    # mu = (0.5, 1e-12, 1.75): r_a = 2e-6 on every row; r_b = 0; r_c = 5.7e-4 on one row of 4.
    assert saturated_fraction(h, g, rel_tol=1e-4, min_fraction=0.99) == pytest.approx(2 / 3)
    assert saturated_fraction(h, g, rel_tol=1e-4, min_fraction=0.7) == pytest.approx(1.0)
    assert saturated_fraction(h, g, rel_tol=1e-6, min_fraction=0.7) == pytest.approx(2 / 3)
    assert saturated_fraction(h, g, rel_tol=1e-6, min_fraction=0.8) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="must match"):
        saturated_fraction(h, g[:2], rel_tol=1e-4)


def test_non_gaussianity_by_hand():
    # n = 3: a = (-1/sqrt 2, 0, 1/sqrt 2); x = (0, 1, 3): W = (3/sqrt 2)^2 / (42/9) = 27/28.
    h = torch.tensor([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0]])
    assert non_gaussianity(h) == pytest.approx((1 / 28 + 1.0) / 2)  # a constant unit scores 1
    # Shapiro & Wilk (1965)'s exact table: n = 4 -> a_3 = 0.1677, a_4 = 0.6872; Royston's
    # approximation is within 0.0015 of it, and its coefficients are antisymmetric with unit norm.
    a = shapiro_wilk_coefficients(4)
    assert a[2:].tolist() == pytest.approx([0.1677, 0.6872], abs=1.5e-3)
    assert a.tolist() == pytest.approx((-a.flip(0)).tolist())
    assert float(a.square().sum()) == pytest.approx(1.0)
    # Shift, scale and column permutation leave it unchanged.
    x = _gaussian(50, 6, 2).exp()
    shifted = 3.0 * x[:, torch.tensor([5, 0, 1, 2, 3, 4])] - 2.0
    assert non_gaussianity(shifted) == pytest.approx(non_gaussianity(x), rel=1e-9)


def test_non_gaussianity_matches_scipy_shapiro():
    stats = pytest.importorskip("scipy.stats")
    x = _gaussian(300, 5, 3)
    x[:, 1] = x[:, 1].exp()  # skewed
    x[:, 2] = x[:, 2].sign()  # two-valued
    expected = sum(1 - stats.shapiro(x[:, j].numpy()).statistic for j in range(5)) / 5
    assert non_gaussianity(x) == pytest.approx(expected, abs=1e-6)


def test_column_scaling_and_permutation_leave_scale_free_metrics_unchanged():
    h = _gaussian(120, 10, 4).relu()
    h[:, 7] = h[:, 2]  # a duplicate pair
    h[:, 9] = 0.0  # a dead unit
    scale = torch.linspace(0.5, 20.0, 10, dtype=torch.float64)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    scale_free = (
        duplicate_fraction,
        duplicate_fraction_cosine,
        non_gaussianity,
        lambda m: dead_fraction(m, zero_tol=0.0),
    )
    for metric in scale_free:
        assert metric(h * scale) == pytest.approx(metric(h), rel=1e-12)
        assert metric(h[:, perm]) == pytest.approx(metric(h), rel=1e-12)
    assert duplicate_fraction(h) == pytest.approx(2 / 10)
    assert dormant_ratio(3.0 * h) == pytest.approx(dormant_ratio(h))  # a common scale only


def test_mean_weight_magnitude():
    w = torch.tensor([[1.0, -2.0], [0.5, -0.5]])
    assert mean_weight_magnitude(w) == pytest.approx(1.0)
