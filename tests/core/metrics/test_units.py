"""Per-unit metrics on matrices whose answers are known by hand."""

import math

import pytest
import torch

from core.metrics import units


def _gaussian(rows, cols, seed):
    return torch.randn(
        rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_k_duplicated_columns(k):
    h = _gaussian(200, 16, k)
    h[:, 16 - k :] = 2.0 * h[:, :k] + 1.0  # k pairs (j, 16 - k + j), positive affine copies
    assert units.duplicate_fraction(h, threshold=0.95) == pytest.approx(2 * k / 16)
    assert units.duplicate_fraction_cosine(h, threshold=0.95) < 2 * k / 16  # one member per pair
    exact = h.clone()
    exact[:, 16 - k :] = exact[:, :k]  # exact copies: cosine 1, the lower index counts only
    assert units.duplicate_fraction_cosine(exact, threshold=0.95) == pytest.approx(k / 16)


def test_duplicates_sign_and_constant_columns():
    h = _gaussian(100, 4, 0)
    h[:, 1] = -h[:, 0]  # anti-correlated: |Pearson| counts both, the paper's cosine counts none
    h[:, 2] = 0.0
    h[:, 3] = 0.0  # two identical constant (dead) columns: no correlation, never duplicates
    assert units.duplicate_fraction(h) == 1.0  # both varying units, of the 2 that vary
    assert units.duplicate_fraction(torch.ones(5, 3)) == 0.0  # nothing varies: no duplicates
    assert units.duplicate_fraction_cosine(h) == 0.0


def test_cosine_duplicates_follow_the_paper_formula():
    # Columns a = (1,0,1,0), c = (3,0,3,1): cos(a, c) = 6 / (sqrt(2) sqrt(19)) = 0.973;
    # centred: a_c = (.5,-.5,.5,-.5), c_c = (1.25,-1.75,1.25,-.75): rho = 2.5 / sqrt(6.75) = 0.962.
    h = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    assert units.duplicate_fraction_cosine(h, threshold=0.95) == pytest.approx(1 / 3)
    assert units.duplicate_fraction_cosine(h, threshold=0.975) == 0.0
    assert units.duplicate_fraction(h, threshold=0.95) == 1.0  # a and c, of the 2 varying units
    assert units.duplicate_fraction(h, threshold=0.965) == 0.0


def test_dead_fraction():
    h = _gaussian(100, 5, 1).abs() + 1.0
    h[:, 0] = 0.0  # all zero: dead
    h[:95, 1] = 0.0  # exactly 95% zero: not dead (z > 0.95 is strict)
    h[:96, 2] = 5e-8  # 96% below the 1e-7 tolerance: dead
    h[:96, 3] = 5e-8
    assert units.dead_fraction(h) == pytest.approx(3 / 5)
    assert units.dead_fraction(h, threshold=0.94) == pytest.approx(4 / 5)
    assert units.dead_fraction(h, zero_tol=0.0, threshold=0.94) == pytest.approx(
        2 / 5
    )  # exact zeros
    assert units.dormant_ratio(h, tau=0.0) == pytest.approx(1 / 5)  # exactly zero on every row


def test_dormant_ratio_by_hand():
    # mean |h| per unit: 1, 1, 1, 0.05 -> layer mean 0.7625, scores 1.311 x3 and 0.0656.
    h = torch.tensor([[1.0, -1.0, 2.0, 0.1], [-1.0, 1.0, 0.0, 0.0]])
    assert units.dormant_ratio(h, tau=0.1) == pytest.approx(1 / 4)
    assert units.dormant_ratio(h, tau=0.025) == 0.0
    assert units.dormant_ratio(torch.zeros(3, 2)) == 1.0


def test_saturated_fraction_by_hand():
    h = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    g = torch.tensor([[1e-6, 0.0, 1e-3], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0]])
    # mu = (0.5, 1e-12, 1.75): r_a = 2e-6 on every row; r_b = 0; r_c = 5.7e-4 on one row of 4.
    assert units.saturated_fraction(h, g, rel_tol=1e-4, min_fraction=0.99) == pytest.approx(2 / 3)
    assert units.saturated_fraction(h, g, rel_tol=1e-4, min_fraction=0.7) == pytest.approx(1.0)
    assert units.saturated_fraction(h, g, rel_tol=1e-6, min_fraction=0.7) == pytest.approx(2 / 3)
    assert units.saturated_fraction(h, g, rel_tol=1e-6, min_fraction=0.8) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="must match"):
        units.saturated_fraction(h, g[:2], rel_tol=1e-4)


def test_non_gaussianity_by_hand():
    # n = 3: a = (-1/sqrt 2, 0, 1/sqrt 2); x = (0, 1, 3): W = (3/sqrt 2)^2 / (42/9) = 27/28.
    h = torch.tensor([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0]])
    assert units.non_gaussianity(h) == pytest.approx((1 / 28 + 1.0) / 2)  # a constant unit scores 1
    # Shapiro & Wilk (1965)'s exact table: n = 4 -> a_3 = 0.1677, a_4 = 0.6872; Royston's
    # approximation is within 0.0015 of it, and its coefficients are antisymmetric with unit norm.
    a = units.shapiro_wilk_coefficients(4)
    assert a[2:].tolist() == pytest.approx([0.1677, 0.6872], abs=1.5e-3)
    assert a.tolist() == pytest.approx((-a.flip(0)).tolist())
    assert float(a.square().sum()) == pytest.approx(1.0)
    # Shift, scale and column permutation leave it unchanged.
    x = _gaussian(50, 6, 2).exp()
    shifted = 3.0 * x[:, torch.tensor([5, 0, 1, 2, 3, 4])] - 2.0
    assert units.non_gaussianity(shifted) == pytest.approx(units.non_gaussianity(x), rel=1e-9)


def test_non_gaussianity_matches_scipy_shapiro():
    stats = pytest.importorskip("scipy.stats")
    x = _gaussian(300, 5, 3)
    x[:, 1] = x[:, 1].exp()  # skewed
    x[:, 2] = x[:, 2].sign()  # two-valued
    expected = sum(1 - stats.shapiro(x[:, j].numpy()).statistic for j in range(5)) / 5
    assert units.non_gaussianity(x) == pytest.approx(expected, abs=1e-6)


def test_column_scaling_and_permutation_leave_scale_free_metrics_unchanged():
    h = _gaussian(120, 10, 4).relu()
    h[:, 7] = h[:, 2]  # a duplicate pair
    h[:, 9] = 0.0  # a dead unit
    scale = torch.linspace(0.5, 20.0, 10, dtype=torch.float64)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    scale_free = (
        units.duplicate_fraction,
        units.duplicate_fraction_cosine,
        units.non_gaussianity,
        lambda m: units.dead_fraction(m, zero_tol=0.0),
    )
    for metric in scale_free:
        assert metric(h * scale) == pytest.approx(metric(h), rel=1e-12)
        assert metric(h[:, perm]) == pytest.approx(metric(h), rel=1e-12)
    assert units.duplicate_fraction(h) == pytest.approx(2 / 9)  # a pair among the 9 varying units
    assert units.dormant_ratio(3.0 * h) == pytest.approx(
        units.dormant_ratio(h)
    )  # a common scale only


def test_mean_weight_magnitude():
    w = torch.tensor([[1.0, -2.0], [0.5, -0.5]])
    assert units.mean_weight_magnitude(w) == pytest.approx(1.0)


def _known_units(means, stds):
    """A 4-row matrix whose column j has mean means[j] and sample std stds[j]: m + s z with
    z = sqrt(3/4) (1, -1, 1, -1), which has mean 0 and sample std 1."""
    z = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) * 0.75**0.5
    m, sd = torch.tensor(means, dtype=torch.float64), torch.tensor(stds, dtype=torch.float64)
    return m[None, :] + sd[None, :] * z[:, None]


def test_unit_statistics_by_hand():
    h = _known_units([0.0, 1.0, 2.0, 5.0], [1.0, 2.0, 3.0, 0.0])
    means, stds = units.unit_mean_std(h)
    assert means.tolist() == pytest.approx([0.0, 1.0, 2.0, 5.0], abs=1e-12)
    assert stds.tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-12)
    assert units.mean_of_means(h) == pytest.approx(2.0)
    assert units.std_of_means(h) == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 3))  # Bessel, D - 1
    assert units.mean_of_stds(h) == pytest.approx(1.5)
    assert units.std_of_stds(h) == pytest.approx(math.sqrt((0.25 + 0.25 + 2.25 + 2.25) / 3))
    # The per-unit std is the sample std over rows (N - 1), as torch's default Tensor.std.
    assert stds.tolist() == pytest.approx(h.std(dim=0).tolist(), abs=1e-12)


def test_unit_statistics_under_scale_and_shift():
    h = _gaussian(300, 8, 5).exp()
    c, b = -2.5, _gaussian(1, 8, 6)  # a common scale, a different shift per unit
    moved = c * h + b
    assert units.mean_of_means(moved) == pytest.approx(c * units.mean_of_means(h) + b.mean().item())
    assert units.mean_of_stds(moved) == pytest.approx(abs(c) * units.mean_of_stds(h), rel=1e-12)
    assert units.std_of_stds(moved) == pytest.approx(abs(c) * units.std_of_stds(h), rel=1e-12)
    assert units.std_of_means(c * h + 7.0) == pytest.approx(
        abs(c) * units.std_of_means(h), rel=1e-12
    )
    # A single unit has no spread across units, a single row none across rows.
    assert units.std_of_means(h[:, :1]) == 0.0 and units.std_of_stds(h[:, :1]) == 0.0
    assert units.mean_of_stds(h[:1]) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        units.unit_mean_std(h[:, 0])
    with pytest.raises(TypeError, match="floating"):
        units.mean_of_means(torch.ones(3, 2, dtype=torch.int64))


@pytest.mark.parametrize("block_entries", [units.BLOCK_ENTRIES, 24])
def test_column_moments_equal_the_direct_formulas_in_float64(monkeypatch, block_entries):
    monkeypatch.setattr(units, "BLOCK_ENTRIES", block_entries)  # 24: blocks of 4 rows
    h = _gaussian(50, 6, 7) * torch.linspace(0.1, 10.0, 6, dtype=torch.float64) + 3.0
    m = units.column_moments(h)
    mean = h.mean(dim=0)
    assert torch.allclose(m.mean, mean, rtol=1e-13, atol=0)
    assert torch.allclose(m.scatter, (h - mean).T @ (h - mean), rtol=1e-12, atol=1e-12)
    assert torch.allclose(m.gram, h.T @ h, rtol=1e-13, atol=0)
    diagonal = units.column_moments(h, cross=False)
    assert diagonal.gram is None
    assert torch.allclose(diagonal.scatter, m.scatter.diagonal(), rtol=1e-13, atol=0)
    assert torch.allclose(diagonal.std(), m.std(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("block_entries", [units.BLOCK_ENTRIES, 1 << 12])
def test_column_moments_keep_the_variance_of_a_float32_unit_far_from_zero(
    monkeypatch, block_entries
):
    monkeypatch.setattr(units, "BLOCK_ENTRIES", block_entries)  # 1 or 10 blocks
    # A unit with mean/std = 10^3 next to its own noisy copy: H^T H - N m m^T in float32 would
    # lose its variance to rounding; the shifted sums keep the scatter and the correlation.
    z = _gaussian(20_000, 2, 8)
    h64 = torch.stack([1e3 + z[:, 0], 1e3 + z[:, 0] + 0.1 * z[:, 1]], dim=1)
    h32 = h64.float()
    exact = h32.double()  # the float32 values, in exact float64 arithmetic
    centred = exact - exact.mean(dim=0)
    m = units.column_moments(h32)
    assert torch.allclose(m.scatter, centred.T @ centred, rtol=1e-5, atol=0)
    assert torch.allclose(m.gram, exact.T @ exact, rtol=1e-6, atol=0)
    rho = float(m.scatter[0, 1] / (m.scatter[0, 0] * m.scatter[1, 1]).sqrt())
    assert rho == pytest.approx(1 / math.sqrt(1.01), abs=2e-3)  # corr(z, z + 0.1 z')
    assert units.duplicate_fraction(h32, threshold=0.99) == units.duplicate_fraction(
        exact, threshold=0.99
    )


def test_full_row_statistics_do_not_depend_on_the_blocks(monkeypatch):
    h = _gaussian(97, 5, 9).relu()
    h[:, 4] = 5e-8
    g = _gaussian(97, 5, 10) * 1e-3
    whole = (
        units.zero_fractions(h),
        units.mean_abs(h),
        units.small_gradient_fractions(g, units.mean_abs(h), 0.05, 4.0),
    )
    monkeypatch.setattr(units, "BLOCK_ENTRIES", 10)  # blocks of 2 rows, the last one of 1
    blocked = (
        units.zero_fractions(h),
        units.mean_abs(h),
        units.small_gradient_fractions(g, units.mean_abs(h), 0.05, 4.0),
    )
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[2], blocked[2])
    assert torch.allclose(whole[1], blocked[1], rtol=1e-14, atol=0)
    assert whole[0][4] == 1.0  # every row below the 1e-7 tolerance
    assert torch.equal(whole[1], h.abs().mean(dim=0))
    # grad_scale s multiplies G: the same as passing s G
    assert torch.equal(whole[2], units.small_gradient_fractions(4.0 * g, units.mean_abs(h), 0.05))
    with pytest.raises(ValueError, match="columns"):
        units.small_gradient_fractions(g, units.mean_abs(h)[:4], 0.05)


def test_duplicate_fractions_do_not_overflow_in_float32():
    """Units of size 1e19: the float32 products of a naive pass overflow (1e38 per entry); the
    duplicate fractions still read one exact pair of 8 units (Pearson: 2/8, cosine: 1/8)."""
    g = torch.Generator().manual_seed(11)
    h = torch.randn(300, 8, generator=g)
    h[:, 5] = h[:, 2]
    for scale in (1.0, 1e19, 1e30):
        assert units.duplicate_fraction(h * scale) == pytest.approx(2 / 8), scale
        assert units.duplicate_fraction_cosine(h * scale) == pytest.approx(1 / 8), scale
    big = torch.full((1_000, 2), 3e38)
    big[::2, 1] = 1e38
    assert units.mean_abs(big).tolist() == pytest.approx([3e38, 2e38], rel=1e-6)  # no inf
    assert units.std_of_means(big) == pytest.approx(2**0.5 * 0.5e38, rel=1e-6)
    h[0, 0] = float("nan")
    assert math.isnan(units.duplicate_fraction(h)) and math.isnan(
        units.duplicate_fraction_cosine(h)
    )


def test_threshold_boundaries_by_hand():
    # saturation: r_ij = |G_ij| / mu_j; mu = 1 for both units
    h = torch.ones(4, 2)
    g = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.5, 0.0], [0.5, 1.0]])
    assert (
        units.saturated_fraction(h, g, rel_tol=0.5, min_fraction=0.5) == 0.5
    )  # r = 0.5: not < 0.5
    assert units.saturated_fraction(h, g, rel_tol=0.5 + 1e-6, min_fraction=0.5) == 1.0
    assert units.saturated_fraction(h, g, rel_tol=0.1, min_fraction=0.75) == 0.0  # 3/4 is not > 3/4
    assert units.saturated_fraction(h, g, rel_tol=0.1, min_fraction=0.74) == 0.5
    # dormancy: mean |h| = (1, 3), layer mean 2, scores (0.5, 1.5); dormant iff score <= tau
    d = torch.tensor([[1.0, 3.0], [-1.0, -3.0]])
    assert units.dormant_ratio(d, tau=0.5) == 0.5
    assert units.dormant_ratio(d, tau=0.5 - 1e-9) == 0.0
    assert units.dormancy_scores(d).tolist() == [0.5, 1.5]
    # cosine duplicates: a = (1, 1, 1, 1), b = (1, 1, 1, -1): cos = 2 / (2 * 2) = 1/2 exactly,
    # and a duplicate needs cos > threshold
    ab = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    assert units.duplicate_fraction_cosine(ab, threshold=0.5) == 0.0
    assert units.duplicate_fraction_cosine(ab, threshold=0.5 - 1e-12) == 0.5


def test_unit_spread_ddof():
    h = _known_units([0.0, 1.0, 2.0, 5.0], [1.0, 2.0, 3.0, 0.0])  # means 0,1,2,5: mean 2
    assert units.std_of_means(h, ddof=0) == pytest.approx(math.sqrt(14 / 4))
    assert units.std_of_means(h, ddof=1) == pytest.approx(math.sqrt(14 / 3))
    assert units.std_of_stds(h, ddof=0) == pytest.approx(math.sqrt(5 / 4))
    assert units.std_of_means(h[:, :1], ddof=0) == 0.0
