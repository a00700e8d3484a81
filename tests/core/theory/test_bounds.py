"""Rényi-2 rank, decorrelation potential, Lemma A.1 and Theorem 3.1 on grids and random matrices,
with their equality cases (paper App. A.1; docs/theory.md)."""

import numpy as np
import pytest

from core.theory import bounds, decorrelation_strength, kernel
from core.theory.kernels import kernel_quadrature

PAPER_ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "elu")
RHO = np.linspace(-1.0, 1.0, 401)


def _clone_groups(*sizes: int) -> np.ndarray:
    """The correlation matrix of groups of exact clones, orthogonal across groups."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return (labels[:, None] == labels[None, :]).astype(np.float64)


def _square(x):
    return x**2


def test_renyi2_rank_of_known_matrices():
    assert bounds.renyi2_rank(np.eye(7)) == pytest.approx(7.0)
    assert bounds.renyi2_rank(np.ones((5, 5))) == pytest.approx(1.0)
    clones = _clone_groups(2, 3, 1)
    assert bounds.renyi2_rank(clones) == pytest.approx(36 / (4 + 9 + 1))
    assert bounds.renyi2_rank(np.diag([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    rho = 0.3  # n^2 / (n + sum_{i != j} rho^2) for an equicorrelated matrix
    c = (1 - rho) * np.eye(4) + rho * np.ones((4, 4))
    assert bounds.renyi2_rank(c) == pytest.approx(16 / (4 + 12 * rho**2))


def test_decorrelation_potential_vanishes_exactly_on_orthogonal_or_cloned_units():
    clones = _clone_groups(2, 3)
    clones[0, 1] = clones[1, 0] = -1.0  # an anti-aligned pair is also a fixed point of Phi
    assert bounds.decorrelation_potential(np.eye(5)) == 0.0
    assert bounds.decorrelation_potential(clones) == 0.0
    c = bounds.correlation_path(bounds.random_correlation_matrix(10, np.random.default_rng(0)), 0.5)
    assert 0.0 < bounds.decorrelation_potential(c) < 1.0


@pytest.mark.parametrize("name", PAPER_ACTIVATIONS + ("sign", "leaky_relu", "selu"))
def test_quartic_gap_bound_holds_on_a_grid(name):
    """Lemma A.1: rho^2 - kappa^2 >= zeta rho^2 (1 - rho^2), with equality at rho = 0, 1."""
    kappa, zeta = kernel(name), decorrelation_strength(name)
    slack = bounds.quartic_gap(kappa, RHO) - bounds.quartic_gap_bound(zeta, RHO)
    assert slack.min() >= -1e-12
    assert slack[200] == pytest.approx(0.0, abs=1e-15)  # rho = 0
    exact = kernel_quadrature(name, [-1.0, 1.0])  # the series kernel misses kappa(1) by its tail
    assert bounds.quartic_gap(lambda r: exact, [-1.0, 1.0])[1] == pytest.approx(0.0, abs=1e-9)


def test_quartic_gap_bound_equality_cases():
    # rho = -1 is a fixed point only for odd (or even) f: sign and tanh yes, relu no
    for name in ("sign", "tanh"):
        assert float(kernel_quadrature(name, [-1.0])[0]) == pytest.approx(-1.0, abs=1e-9)
    assert float(kernel("relu")(-1.0)) == pytest.approx(-1 / (np.pi - 1), abs=1e-12)
    # a linear f: zeta = 0 and no gap anywhere
    assert bounds.quartic_gap(kernel("identity"), RHO) == pytest.approx(0.0, abs=0)
    # f = h_2 (x^2 normalised): kappa = rho^2, zeta = 1, the bound is attained everywhere
    kappa = kernel(_square, terms=8)
    assert decorrelation_strength(_square) == pytest.approx(1.0, abs=1e-12)
    assert bounds.quartic_gap(kappa, RHO) == pytest.approx(
        bounds.quartic_gap_bound(1.0, RHO), abs=1e-12
    )


def _random_matrices(count: int, seed: int) -> list[np.ndarray]:
    """Random correlation matrices of mixed size, rank, ridge, and position on the path from I."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(5, 40))
        target = bounds.random_correlation_matrix(
            n, rng, rank=int(rng.integers(1, n)), ridge=float(rng.uniform(1e-3, 1.0))
        )
        out.append(bounds.correlation_path(target, float(rng.uniform(0.05, 1.0))))
    return out


@pytest.mark.parametrize("name", PAPER_ACTIVATIONS)
def test_rank_gain_bound_on_random_correlation_matrices(name):
    """Theorem 3.1: r_2(kappa[C]) / r_2(C) >= 1 / (1 - zeta Phi) >= 1 + zeta Phi > 1."""
    kappa, zeta = kernel(name), decorrelation_strength(name)
    for c in _random_matrices(50, seed=1):
        phi = bounds.decorrelation_potential(c)
        ratio, tight = bounds.rank_gain(c, kappa), bounds.rank_gain_bound(zeta, phi)
        assert ratio >= tight - 1e-12
        assert tight >= bounds.rank_gain_bound(zeta, phi, linear=True) > 1.0


def test_rank_gain_reference_value():
    """docs/theory.md: ReLU on C(0.5), R rank 5 plus ridge, n = 50: ratio ~1.47, bound ~1.17."""
    c = bounds.correlation_path(bounds.random_correlation_matrix(50, np.random.default_rng(0)), 0.5)
    phi, zeta = bounds.decorrelation_potential(c), decorrelation_strength("relu")
    assert bounds.rank_gain(c, kernel("relu")) == pytest.approx(1.47, abs=0.1)
    assert bounds.rank_gain_bound(zeta, phi, linear=True) == pytest.approx(1.17, abs=0.05)


def test_rank_gain_equality_cases():
    # f = h_2 attains the sharper bound on every matrix
    kappa = kernel(_square, terms=8)
    for c in _random_matrices(10, seed=2):
        phi = bounds.decorrelation_potential(c)
        assert bounds.rank_gain(c, kappa) == pytest.approx(
            bounds.rank_gain_bound(1.0, phi), rel=1e-12
        )
    # linear f: ratio 1
    c = _random_matrices(1, seed=3)[0]
    assert bounds.rank_gain(c, kernel("identity")) == pytest.approx(1.0, abs=1e-14)
    # orthogonal or cloned units (rho in {0, 1}): ratio 1 for every activation
    clones = _clone_groups(2, 3, 1, 1)
    for name in ("relu", "sign"):
        assert bounds.rank_gain(clones, kernel(name)) == pytest.approx(1.0, abs=1e-12)
    # anti-aligned units (rho = -1): Phi = 0, ratio 1 for odd f but > 1 for relu (docs/theory.md)
    anti = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert bounds.decorrelation_potential(anti) == 0.0
    assert bounds.rank_gain(anti, kernel("sign")) == pytest.approx(1.0, abs=1e-12)
    assert bounds.rank_gain(anti, kernel("relu")) == pytest.approx(2 / (1 + (np.pi - 1) ** -2))


def test_apply_kernel_keeps_a_unit_diagonal():
    c = _random_matrices(1, seed=4)[0]
    out = bounds.apply_kernel(c, kernel("tanh", terms=4))
    assert np.diag(out) == pytest.approx(1.0, abs=0)
    assert np.allclose(out, out.T)
    assert np.linalg.eigvalsh(out).min() > -1e-12  # kappa[C] is again a correlation matrix
