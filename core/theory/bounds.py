"""Rényi-2 rank, decorrelation potential, and the bounds of Lemma A.1 and Theorem 3.1.

For an n x n correlation matrix C (unit diagonal) and a normalised activation with kernel kappa and
decorrelation strength zeta (see `core.theory.kernels`):

- Rényi-2 rank: r_2(C) = (tr C)^2 / ||C||_F^2 = n^2 / (n + sum_{i != j} rho_ij^2).
- Decorrelation potential: Phi(C) = sum_{i != j} rho_ij^2 (1 - rho_ij^2) / ||C||_F^2, in [0, 1).
- Lemma A.1 (quartic gap): rho^2 - kappa(rho)^2 >= zeta rho^2 (1 - rho^2) on [-1, 1].
  Equality at rho = 0 and rho = 1 (kappa(1) = 1), at rho = -1 when f is odd, everywhere when f is
  linear (zeta = 0) or f = +-h_2 (kappa = rho^2, zeta = 1).
- Theorem 3.1 (rank gain): r_2(kappa[C]) / r_2(C) = ||C||_F^2 / ||kappa[C]||_F^2
  >= 1 / (1 - zeta Phi(C)) >= 1 + zeta Phi(C). The ratio is 1 iff zeta = 0 or every off-diagonal
  rho_ij is in {-1, 0, 1} (orthogonal or cloned units); the first bound is an equality for
  f = +-h_2, the second iff zeta Phi(C) = 0.

The formulas reconstruct the paper's App. A.1 (whose extracted text lost the mathematics) from
every step of its proof; docs/theory.md records the derivation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Kernel = Callable[[npt.ArrayLike], np.ndarray]


def _off_diagonal(c: np.ndarray) -> np.ndarray:
    return c[~np.eye(len(c), dtype=bool)]


def renyi2_rank(c: npt.ArrayLike) -> float:
    """r_2(C) = (tr C)^2 / ||C||_F^2 of a symmetric PSD matrix (the participation ratio)."""
    c = np.asarray(c, dtype=np.float64)
    return float(np.trace(c) ** 2 / np.sum(c * c))


def decorrelation_potential(c: npt.ArrayLike) -> float:
    """Phi(C) = sum_{i != j} rho_ij^2 (1 - rho_ij^2) / ||C||_F^2 of a correlation matrix C."""
    c = np.asarray(c, dtype=np.float64)
    rho2 = _off_diagonal(c) ** 2
    return float(np.sum(rho2 * (1.0 - rho2)) / np.sum(c * c))


def apply_kernel(c: npt.ArrayLike, kappa: Kernel) -> np.ndarray:
    """kappa[C]: kappa entrywise on the off-diagonal, the unit diagonal kept (kappa(1) = 1).

    The diagonal is set to 1 rather than kappa(1) so that a truncated series kernel (kappa(1) =
    sum_{k<=K} c_k^2 < 1) still yields the correlation matrix of the normalised activations.
    """
    c = np.asarray(c, dtype=np.float64)
    out = np.asarray(kappa(c), dtype=np.float64).copy()
    np.fill_diagonal(out, 1.0)
    return out


def quartic_gap(kappa: Kernel, rho: npt.ArrayLike) -> np.ndarray:
    """rho^2 - kappa(rho)^2: the decorrelation gap of Lemma A.1."""
    rho = np.asarray(rho, dtype=np.float64)
    return rho**2 - np.asarray(kappa(rho)) ** 2


def quartic_gap_bound(zeta: float, rho: npt.ArrayLike) -> np.ndarray:
    """zeta rho^2 (1 - rho^2): the lower bound of Lemma A.1 (universal quartic gap bound)."""
    rho = np.asarray(rho, dtype=np.float64)
    return zeta * rho**2 * (1.0 - rho**2)


def rank_gain(c: npt.ArrayLike, kappa: Kernel) -> float:
    """r_2(kappa[C]) / r_2(C) = ||C||_F^2 / ||kappa[C]||_F^2 (Theorem 3.1's ratio)."""
    c = np.asarray(c, dtype=np.float64)
    return renyi2_rank(apply_kernel(c, kappa)) / renyi2_rank(c)


def rank_gain_bound(zeta: float, potential: float, linear: bool = False) -> float:
    """Theorem 3.1's lower bound on the rank ratio: 1 / (1 - zeta Phi), or 1 + zeta Phi if `linear`.

    The paper states the linear form; 1 / (1 - zeta Phi) is the sharper step of its proof.
    """
    x = zeta * potential
    return 1.0 + x if linear else 1.0 / (1.0 - x)


def random_correlation_matrix(
    n: int, generator: np.random.Generator, rank: int = 5, ridge: float = 0.1
) -> np.ndarray:
    """normalise(A A^T + ridge I) with A ~ N(0, 1)^{n x rank}: dense correlations, full rank.

    normalise(S) = D^{-1/2} S D^{-1/2} with D = diag(S).
    """
    a = generator.standard_normal((n, rank))
    s = a @ a.T + ridge * np.eye(n)
    d = 1.0 / np.sqrt(np.diag(s))
    c = s * d[:, None] * d[None, :]
    np.fill_diagonal(c, 1.0)
    return c


def correlation_path(target: npt.ArrayLike, t: float) -> np.ndarray:
    """C(t) = (1 - t) I + t R: a correlation matrix for t in [0, 1], from I (t = 0) to R (t = 1)."""
    r = np.asarray(target, dtype=np.float64)
    return (1.0 - t) * np.eye(len(r)) + t * r
