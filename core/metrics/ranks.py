"""Rank metrics of an activation matrix H (N rows = samples, D columns = units).

Every rank here is a function of the squared singular values sigma_i^2 of H (uncentred), of
H_c = H - column means (centred; sigma_i(H_c)^2 are the eigenvalues of the scatter matrix
H_c^T H_c = (N-1) * sample covariance), or of H_s = H_c with unit-norm columns (standardised;
sigma_i(H_s)^2 are the eigenvalues of the correlation matrix). Every rank below is scale-free.
They are computed once per matrix by `squared_singular_values`, in float64, and the `*_of`
functions turn them into ranks, so that the probe shares one spectrum between several ranks.
Each public rank takes `via="gram"` (eigenvalues of the Gram matrix, the fast path) or
`via="svd"` (singular values directly); the two agree in exact arithmetic, and the Gram path
cannot resolve singular values below about sqrt(max(N, D) * eps_float64) * sigma_1.
"""

from __future__ import annotations

import torch

from core.metrics.scalar import host_float

VIAS = ("gram", "svd")


def check_matrix(H: torch.Tensor) -> None:
    """Refuse anything but a non-empty 2-D (samples x features) floating tensor."""
    if H.dim() != 2 or 0 in H.shape:
        raise ValueError(
            f"expected a non-empty 2-D (samples x features) matrix, got shape {tuple(H.shape)}; "
            "flatten conv maps and token sequences with core.models.capture.unit_matrix"
        )
    if not H.is_floating_point():
        raise TypeError(f"expected a floating-point matrix, got {H.dtype}")


def squared_singular_values(
    H: torch.Tensor, *, center: bool = False, standardize: bool = False, via: str = "gram"
) -> torch.Tensor:
    """sigma_1^2 >= ... >= sigma_r^2 of H (H_c with `center`, H_s with `standardize`), float64.

    r = min(N, D); `standardize` centres and scales every non-constant column to unit norm and
    drops the constant ones (no correlation), so the values are the eigenvalues of the
    correlation matrix of the non-constant units (r = min(N, V), V of them; all 0 if V = 0).
    `via="gram"`: the eigenvalues (`eigvalsh`) of the smaller Gram matrix, H^T H (D x D) if
    N >= D else H H^T (N x N), with a round-off floor: values <= max(N, D) * eps_float64 *
    sigma_1^2 are set to exactly 0 (an exactly rank-deficient matrix otherwise leaves
    ~eps * sigma_1^2 of noise, and the Gram path resolves nothing below it). `via="svd"`:
    `svdvals(H)^2`, unfloored. A matrix with a non-finite entry gives NaN values (no error,
    no silent overflow).
    """
    check_matrix(H)
    if via not in VIAS:
        raise ValueError(f"unknown via {via!r}; valid: {', '.join(VIAS)}")
    x = H.detach().to(torch.float64)
    finite = torch.isfinite(x).all()
    x = torch.where(finite, x, 0.0)
    varying = x.amax(dim=0) != x.amin(dim=0) if standardize else None  # constant units: dropped
    if center or standardize:
        x = x - x.mean(dim=0, keepdim=True)
    if standardize:
        norms = x.norm(dim=0)
        x = (x / torch.where(varying, norms, 1.0))[:, varying]
        if x.shape[1] == 0:
            return torch.where(
                finite, torch.zeros(1, dtype=torch.float64, device=H.device), torch.nan
            )
    if via == "svd":
        s2 = torch.linalg.svdvals(x).square()
    else:
        gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # (min(N, D), min(N, D))
        s2 = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)
        floor = s2[0] * max(x.shape) * torch.finfo(torch.float64).eps
        s2 = torch.where(s2 > floor, s2, torch.zeros_like(s2))
    return torch.where(finite, s2, torch.nan)


def default_rtol(H: torch.Tensor) -> float:
    """max(N, D) * eps(dtype of H): the relative tolerance of `torch.linalg.matrix_rank`."""
    return max(H.shape) * torch.finfo(H.dtype).eps


def _nan_propagating(rank_of):
    """A spectrum -> rank function that returns NaN for a NaN spectrum (a non-finite matrix)."""

    def of(s2: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.where(s2.isnan().any(), torch.nan, rank_of(s2, *args, **kwargs))

    of.__name__, of.__doc__ = rank_of.__name__, rank_of.__doc__
    return of


def _shannon_rank(w: torch.Tensor) -> torch.Tensor:
    """exp(-sum_i p_i ln p_i) with p = w / sum(w) and 0 ln 0 = 0; 0 for w = 0."""
    total = w.sum()
    p = w / torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, torch.special.entr(p).sum().exp(), 0.0)


def _cumulative_rank(w: torch.Tensor, mass: float) -> torch.Tensor:
    """The smallest k whose k largest weights hold >= `mass` of sum(w); 0 for w = 0."""
    total = w.sum()
    share = torch.cumsum(w, 0) / torch.where(total > 0, total, 1.0)  # w is sorted descending
    k = ((share < mass).sum() + 1).clamp_max(w.numel()).to(w.dtype)
    return torch.where(total > 0, k, 0.0)


@_nan_propagating
def effective_rank_of(s2: torch.Tensor) -> torch.Tensor:
    """Shannon effective rank of the singular values sigma_i = sqrt(s2) (see `effective_rank`)."""
    return _shannon_rank(s2.sqrt())


@_nan_propagating
def effective_rank_cov_of(s2c: torch.Tensor) -> torch.Tensor:
    """Shannon effective rank of the eigenvalues s2c of a covariance or correlation matrix
    (see `effective_rank_cov`, `effective_rank_corr`)."""
    return _shannon_rank(s2c)


@_nan_propagating
def participation_ratio_of(s2c: torch.Tensor) -> torch.Tensor:
    """(sum lambda)^2 / sum lambda^2 of the eigenvalues s2c of a covariance or correlation matrix
    (see `participation_ratio`, `participation_ratio_corr`)."""
    denominator = s2c.square().sum()
    return torch.where(
        denominator > 0, s2c.sum().square() / torch.where(denominator > 0, denominator, 1.0), 0.0
    )


@_nan_propagating
def stable_rank_of(s2: torch.Tensor) -> torch.Tensor:
    """sum sigma^2 / sigma_1^2 (see `stable_rank`)."""
    return torch.where(s2[0] > 0, s2.sum() / torch.where(s2[0] > 0, s2[0], 1.0), 0.0)


@_nan_propagating
def numerical_rank_of(s2: torch.Tensor, rtol: float) -> torch.Tensor:
    """#{i : sigma_i > rtol * sigma_1} among the non-zero sigma_i (see `numerical_rank`)."""
    return ((s2 > rtol**2 * s2[0]) & (s2 > 0)).sum().to(s2.dtype)


@_nan_propagating
def approximate_rank_of(s2: torch.Tensor, mass: float) -> torch.Tensor:
    """Smallest k with sum_{i<=k} sigma_i^2 >= mass * sum sigma^2 (see `approximate_rank`)."""
    return _cumulative_rank(s2, mass)


@_nan_propagating
def approximate_rank_abs_of(s2: torch.Tensor, mass: float) -> torch.Tensor:
    """Smallest k with sum_{i<=k} sigma_i >= mass * sum sigma (see `approximate_rank_abs`)."""
    return _cumulative_rank(s2.sqrt(), mass)


@host_float
def effective_rank(H: torch.Tensor, *, via: str = "gram") -> torch.Tensor:
    """Shannon effective rank of the singular values of the raw (uncentred) H.

    p_i = sigma_i / sum_j sigma_j,  erank = exp(-sum_i p_i ln p_i)  (0 ln 0 = 0; 0 for H = 0).
    Roy & Vetterli (2007), "The effective rank: a measure of effective dimensionality"; the
    paper's code (paper §B.1.2, "normalized singular values from the activation matrix SVD"; its
    +1e-12 inside the log changes the value by at most D * 1e-12) and Dohare et al. (2024) use
    it. Between 1 and min(N, D).
    """
    return effective_rank_of(squared_singular_values(H, via=via))


@host_float
def effective_rank_cov(H: torch.Tensor, *, via: str = "gram") -> torch.Tensor:
    """Shannon effective rank of the eigenvalues lambda_i of the sample covariance of H.

    p_i = lambda_i / sum_j lambda_j with lambda_i = sigma_i(H_c)^2, H_c = H - column means;
    erank_cov = exp(-sum_i p_i ln p_i) (used by the paper's proof-of-concept scripts). Between 1
    and min(N - 1, D). Units with a large variance dominate it; `effective_rank_corr` weighs
    every unit alike.
    """
    return effective_rank_cov_of(squared_singular_values(H, center=True, via=via))


@host_float
def effective_rank_corr(H: torch.Tensor, *, via: str = "gram") -> torch.Tensor:
    """Shannon effective rank of the eigenvalues of the correlation matrix R of H.

    R_jk = rho_jk, the Pearson correlation over the rows of the V non-constant units (constant
    units have no correlation and are left out); p_i = lambda_i(R) / V,
    erank_corr = exp(-sum_i p_i ln p_i). Between 1 and min(N - 1, V); 0 if V = 0.
    """
    return effective_rank_cov_of(squared_singular_values(H, standardize=True, via=via))


@host_float
def participation_ratio(H: torch.Tensor, *, via: str = "gram") -> torch.Tensor:
    """Participation ratio = Renyi-2 effective rank of the sample covariance C of H.

    PR = (tr C)^2 / ||C||_F^2 = (sum lambda_i)^2 / sum lambda_i^2 = ||H_c||_F^4 / ||H_c^T H_c||_F^2
    with H_c = H - column means (0 for a constant H). This is what the paper's code logs as
    "stable_rank" (paper §B.1.2: mean-centred activations). Units with a large variance
    dominate it; the Renyi-2 rank of the correlation matrix, which Theorem 3.1 bounds, is
    `participation_ratio_corr`.
    """
    return participation_ratio_of(squared_singular_values(H, center=True, via=via))


@host_float
def participation_ratio_corr(H: torch.Tensor, *, via: str = "gram") -> torch.Tensor:
    """Renyi-2 effective rank of the correlation matrix R of H: the rank Theorem 3.1 bounds.

    r_2(R) = (tr R)^2 / ||R||_F^2 = V^2 / (V + sum_{j != k} rho_jk^2), rho the Pearson correlation
    over the rows of the V non-constant units (constant units have no correlation and are left
    out; 0 if V = 0). Paper §3, Theorem 3.1: an activation with decorrelation strength zeta
    raises it, r_2(kappa[R]) / r_2(R) >= 1 + zeta Phi(R); equal to 1 only for cloned (rho = 1)
    or uncorrelated units. Between 1 and min(N - 1, V).
    """
    return participation_ratio_of(squared_singular_values(H, standardize=True, via=via))


@host_float
def stable_rank(H: torch.Tensor, *, via: str = "gram") -> torch.Tensor:
    """Classical stable rank of the raw H: ||H||_F^2 / ||H||_2^2 = sum sigma_i^2 / sigma_1^2.

    Rudelson & Vershynin (2007); the paper's README and an older draft call this "stable rank",
    but the paper's code computes `participation_ratio` instead (docs/metrics.md).
    """
    return stable_rank_of(squared_singular_values(H, via=via))


@host_float
def numerical_rank(H: torch.Tensor, *, rtol: float | None = None, via: str = "svd") -> torch.Tensor:
    """#{i : sigma_i > rtol * sigma_1}, the number of singular values above a relative tolerance.

    `rtol=None` takes max(N, D) * eps(dtype of H), as `torch.linalg.matrix_rank` does (which it
    equals on the default `via="svd"`); `rtol=0` counts every non-zero singular value, rounding
    noise included (Dohare et al. 2024's "rank", an exact non-zero test). On `via="gram"`
    nothing below the round-off floor of `squared_singular_values` is counted, whatever `rtol`.
    The paper's proof-of-concept "hard rank" #{lambda_i(Cov) > 1e-6 lambda_1} is
    numerical_rank(H - column means, rtol=1e-3).
    """
    tol = default_rtol(H) if rtol is None else rtol
    return numerical_rank_of(squared_singular_values(H, via=via), tol)


@host_float
def approximate_rank(H: torch.Tensor, *, mass: float = 0.99, via: str = "gram") -> torch.Tensor:
    """The smallest k such that the k largest sigma_i^2 hold at least `mass` of sum_i sigma_i^2.

    Yang et al. (2019), "Harnessing structures for value-based planning and reinforcement
    learning"; Dohare et al. (2024)'s "approximate rank" (mass 0.99).
    """
    return approximate_rank_of(squared_singular_values(H, via=via), mass)


@host_float
def approximate_rank_abs(H: torch.Tensor, *, mass: float = 0.99, via: str = "gram") -> torch.Tensor:
    """The smallest k such that the k largest sigma_i (not squared) hold `mass` of sum_i sigma_i.

    = 1 + #{k : sum_{i<=k} sigma_i / sum_j sigma_j < mass}: what Dohare et al. (2024)'s CIFAR
    analysis and RL code log as "stable rank" (docs/metrics.md).
    """
    return approximate_rank_abs_of(squared_singular_values(H, via=via), mass)
