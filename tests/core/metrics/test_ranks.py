"""Rank metrics on matrices whose answers are known by hand."""

import math

import pytest
import torch

from core.metrics import ranks

UNCENTRED = (
    ranks.effective_rank,
    ranks.stable_rank,
    ranks.numerical_rank,
    ranks.approximate_rank,
    ranks.approximate_rank_abs,
)
CENTRED = (
    ranks.effective_rank_cov,
    ranks.participation_ratio,
    ranks.effective_rank_corr,
    ranks.participation_ratio_corr,
)
ALL_RANKS = UNCENTRED + CENTRED


@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("via", ["gram", "svd"])
def test_identity_has_full_rank(n, via):
    eye = torch.eye(n, dtype=torch.float64)
    for rank in UNCENTRED:
        assert rank(eye, via=via) == pytest.approx(n, rel=1e-9), rank.__name__
    # The centred ranks see the covariance: [I; -I] has column means 0 and covariance 2I / (2n-1).
    if n > 1:
        both = torch.cat([eye, -eye])
        for rank in CENTRED:
            assert rank(both, via=via) == pytest.approx(n, rel=1e-9), rank.__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("via", ["gram", "svd"])
def test_rank_one_matrix_has_rank_one(dtype, via):
    u = torch.tensor([1.0, -2.0, 3.0, 0.0, 5.0, 1.0, 2.0], dtype=dtype)
    v = torch.tensor([2.0, 1.0, -1.0, 4.0], dtype=dtype)
    h = torch.outer(u, v)  # integers: exact in float32 too
    for rank in ALL_RANKS:
        assert rank(h, via=via) == pytest.approx(1.0, abs=1e-6), rank.__name__
        assert rank(h.T, via=via) == pytest.approx(1.0, abs=1e-6), rank.__name__


def test_hand_computed_spectrum():
    h = torch.tensor([[4.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # sigma = (4, 3)
    p = (4 / 7, 3 / 7)
    assert ranks.effective_rank(h) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    assert ranks.stable_rank(h) == pytest.approx(25 / 16)
    assert ranks.approximate_rank(h, mass=0.6) == 1  # 16/25 = 0.64 >= 0.6
    assert ranks.approximate_rank(h, mass=0.65) == 2
    assert ranks.approximate_rank_abs(h, mass=0.55) == 1  # 4/7 = 0.571
    assert ranks.approximate_rank_abs(h, mass=0.6) == 2
    assert ranks.numerical_rank(h, rtol=0.8) == 1  # 3 < 0.8 * 4
    assert ranks.numerical_rank(h, rtol=0.7) == 2
    assert ranks.effective_rank(torch.zeros(3, 2)) == 0.0
    assert ranks.participation_ratio(torch.ones(3, 2)) == 0.0  # constant columns: zero covariance


def _with_covariance(c: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows x n) matrix whose centred scatter matrix H_c^T H_c is exactly c."""
    z = torch.randn(rows, c.shape[0], generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(dim=0))  # orthonormal columns with zero mean
    evals, evecs = torch.linalg.eigh(c)
    return q @ (evecs * evals.sqrt()) @ evecs.T  # q @ c^(1/2)


@pytest.mark.parametrize(("n", "rho"), [(2, 0.5), (6, 0.3), (10, 0.9), (8, 0.0)])
def test_equicorrelated_participation_ratio(n, rho):
    c = torch.full((n, n), rho, dtype=torch.float64).fill_diagonal_(1.0)
    h = _with_covariance(c, 50, torch.Generator().manual_seed(n))
    assert ranks.participation_ratio(h) == pytest.approx(
        n**2 / (n + n * (n - 1) * rho**2), rel=1e-9
    )
    # Eigenvalues 1 + (n-1) rho (once) and 1 - rho (n - 1 times), over their sum n.
    p = [(1 + (n - 1) * rho) / n] + [(1 - rho) / n] * (n - 1)
    expected = math.exp(-sum(q * math.log(q) for q in p if q > 0))
    assert ranks.effective_rank_cov(h) == pytest.approx(expected, rel=1e-9)


def test_scale_and_permutation_leave_ranks_unchanged():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(30, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, 12, generator=g, dtype=torch.float64
    )
    perm = torch.randperm(12, generator=g)
    for rank in ALL_RANKS:
        assert rank(h[:, perm]) == pytest.approx(rank(h), rel=1e-9), rank.__name__
        assert rank(h[torch.randperm(30, generator=g)]) == pytest.approx(rank(h), rel=1e-9)
        assert rank(7.5 * h) == pytest.approx(rank(h), rel=1e-9), rank.__name__


@pytest.mark.parametrize("shape", [(60, 20), (20, 60), (33, 33)])
def test_gram_and_svd_paths_agree(shape):
    g = torch.Generator().manual_seed(sum(shape))
    full = torch.randn(*shape, generator=g, dtype=torch.float64)
    low = full[:, :5] @ torch.randn(5, shape[1], generator=g, dtype=torch.float64)  # rank 5
    for h in (full, low, full.exp()):
        for rank in ALL_RANKS:
            assert rank(h, via="gram") == pytest.approx(rank(h, via="svd"), abs=1e-6), rank.__name__
    assert ranks.numerical_rank(low) == 5 == ranks.numerical_rank(low, via="svd")


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="valid: gram, svd"):
        ranks.effective_rank(torch.eye(3), via="qr")
    with pytest.raises(ValueError, match="unit_matrix"):
        ranks.effective_rank(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        ranks.stable_rank(torch.eye(3, dtype=torch.int64))


def test_tensor_versions_stay_on_the_device():
    h = torch.eye(4)
    value = ranks.effective_rank.tensor(h)
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and value.device == h.device
    assert isinstance(ranks.effective_rank(h), float)


@pytest.mark.parametrize(("n", "rho"), [(3, 0.5), (6, 0.3), (10, 0.9)])
def test_correlation_ranks_ignore_the_units_scales(n, rho):
    """Equicorrelated units with scales 1 .. 10^3: the correlation ranks are the closed forms
    n^2 / (n + n(n-1) rho^2) and the Shannon rank of (1 + (n-1) rho, 1 - rho, ...) / n; the
    covariance ranks follow the large units instead. A constant unit is left out."""
    c = torch.full((n, n), rho, dtype=torch.float64).fill_diagonal_(1.0)
    h = _with_covariance(c, 60, torch.Generator().manual_seed(n))
    scaled = h * torch.logspace(0, 3, n, dtype=torch.float64)
    with_constant = torch.cat([scaled, torch.full((60, 1), 4.0, dtype=torch.float64)], dim=1)
    renyi = n**2 / (n + n * (n - 1) * rho**2)
    p = [(1 + (n - 1) * rho) / n] + [(1 - rho) / n] * (n - 1)
    shannon = math.exp(-sum(q * math.log(q) for q in p))
    for m in (h, scaled, with_constant):
        assert ranks.participation_ratio_corr(m) == pytest.approx(renyi, rel=1e-9)
        assert ranks.effective_rank_corr(m) == pytest.approx(shannon, rel=1e-9)
    assert ranks.participation_ratio(scaled) != pytest.approx(renyi, rel=0.05)  # covariance: not so


def test_correlation_rank_equals_numpy_corrcoef():
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(3)
    h = torch.randn(40, 7, generator=g, dtype=torch.float64).exp() @ torch.randn(
        7, 9, generator=g, dtype=torch.float64
    )
    r = np.corrcoef(h.numpy(), rowvar=False)
    assert ranks.participation_ratio_corr(h) == pytest.approx(
        np.trace(r) ** 2 / (r**2).sum(), rel=1e-10
    )
    lam = np.clip(np.linalg.eigvalsh(r), 0, None) / 9
    lam = lam[lam > 0]
    assert ranks.effective_rank_corr(h) == pytest.approx(
        np.exp(-(lam * np.log(lam)).sum()), rel=1e-8
    )
    assert ranks.participation_ratio_corr(torch.ones(5, 3)) == 0.0  # no unit varies


def test_numerical_rank_is_torch_matrix_rank_and_the_gram_route_floors():
    """sigma_i = 10^(-0.45 i), i < 30, float64: matrix_rank keeps all 30 (tolerance 100 eps =
    2.2e-14 < sigma_29 = 8.9e-14); the Gram route's round-off floor (sigma^2 <= 100 eps
    sigma_1^2, i.e. 10^(-0.9 i) <= 2.2e-14) keeps i <= 15: 16."""
    g = torch.Generator().manual_seed(4)
    q1, _ = torch.linalg.qr(torch.randn(100, 30, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    sigma = 10 ** (-0.45 * torch.arange(30, dtype=torch.float64))
    h = q1 @ torch.diag(sigma) @ q2.T
    assert int(torch.linalg.matrix_rank(h)) == 30
    assert ranks.numerical_rank(h) == 30 == ranks.numerical_rank(h, via="svd")
    assert ranks.numerical_rank(h, via="gram") == 16
    assert ranks.numerical_rank(h, rtol=0.0) == 30
    f32 = h.float()
    assert ranks.numerical_rank(f32) == int(torch.linalg.matrix_rank(f32))


def test_rank_boundaries_by_hand():
    two = 2.0 * torch.eye(2, dtype=torch.float64)  # sigma = (2, 2): shares exactly 1/2
    assert ranks.approximate_rank(two, mass=0.5) == 1  # the cumulative share reaches the mass
    assert ranks.approximate_rank(two, mass=0.5 + 1e-12) == 2
    assert ranks.approximate_rank_abs(two, mass=0.5) == 1
    h = torch.diag(torch.tensor([4.0, 2.0], dtype=torch.float64))
    assert ranks.numerical_rank(h, rtol=0.5) == 1  # 2 = 0.5 * 4 is not above the tolerance
    assert ranks.numerical_rank(h, rtol=0.5 - 1e-12) == 2


def test_overflowing_and_non_finite_matrices():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(50, 6, generator=g)
    big = h * 1e30  # float32: its Gram would overflow in float32, not in the float64 route
    for rank in ALL_RANKS:
        assert rank(big) == pytest.approx(rank(h), rel=1e-6), rank.__name__
    h[3, 2] = float("inf")
    for rank in ALL_RANKS:
        assert math.isnan(rank(h)), rank.__name__
