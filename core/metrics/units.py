"""Per-unit metrics of an activation matrix H (N rows = samples, D columns = units) and, for
saturation, the gradient matrix G of the same layer: the fraction of units that are dead, dormant,
saturated or duplicated, non-Gaussianity, and the mean weight magnitude."""

from __future__ import annotations

import torch

from core.metrics.ranks import check_matrix
from core.metrics.scalar import host_float


def _precise(t: torch.Tensor) -> torch.Tensor:
    """`t` itself in float32/float64 (no copy: these metrics read every row of a conv map); half
    precisions are widened to float32. D-sized results are then taken in float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@host_float
def dead_fraction(
    H: torch.Tensor, *, threshold: float = 0.95, zero_tol: float = 1e-7
) -> torch.Tensor:
    """Fraction of units that are zero on more than `threshold` of the rows.

    z_j = (1/N) sum_i 1[|H_ij| < zero_tol or H_ij = 0],
    dead_fraction = (1/D) sum_j 1[z_j > threshold].
    The paper's code (paper_spec §2.1): threshold 0.95, zero_tol 1e-7. `zero_tol=0` tests exact
    zeros: with threshold 0.99 that is Dohare et al. (2024)'s CIFAR "dormant units" (non-zero on
    fewer than 1% of the probe rows).
    """
    check_matrix(H)
    zero = H.abs() < zero_tol if zero_tol > 0 else H == 0  # |h| < tol includes h = 0
    return (zero.sum(dim=0).double() / H.shape[0] > threshold).double().mean()


@host_float
def dormant_ratio(H: torch.Tensor, *, tau: float = 0.025) -> torch.Tensor:
    """Fraction of tau-dormant units (ReDo).

    s_j = mean_i |H_ij| / ((1/D) sum_k mean_i |H_ik|);  unit j is dormant iff s_j <= tau.
    Sokar et al. (2023), "The dormant neuron phenomenon in deep reinforcement learning". With
    tau = 0 a unit is dormant iff it is exactly zero on every row: Dohare et al. (2024)'s
    permuted-MNIST "dead units" (sum_i |H_ij| = 0). If every unit is zero, all are dormant.
    """
    check_matrix(H)
    mean_abs = _precise(H).abs().mean(dim=0).double()  # (D,)
    layer_mean = mean_abs.mean()
    score = mean_abs / torch.where(layer_mean > 0, layer_mean, 1.0)
    return (score <= tau).double().mean()


@host_float
def saturated_fraction(
    H: torch.Tensor, G: torch.Tensor, *, rel_tol: float = 0.05, min_fraction: float = 0.99
) -> torch.Tensor:
    """Fraction of units whose loss gradient is negligible against their activation scale.

    mu_j = max((1/N) sum_i |H_ij|, 1e-12),  r_ij = |G_ij| / mu_j,
    saturated_fraction = (1/D) sum_j 1[(1/N) sum_i 1[r_ij < rel_tol] > min_fraction].
    The paper's rule (paper_spec §2.3). What G is decides what it measures: the paper passes the
    gradient of the batch-mean loss, which scales as 1/(batch size), so its threshold 1e-4 depends
    on the probe size; passing per-sample gradients d loss_b / d H (= batch size x that gradient,
    as the probe does) makes the fraction independent of the batch size. rel_tol 0.05 on
    per-sample gradients is the paper's 1e-4 at its probe size of 500.
    """
    check_matrix(H)
    if G.shape != H.shape:
        raise ValueError(f"G has shape {tuple(G.shape)}, H has {tuple(H.shape)}; they must match")
    x, g = _precise(H), _precise(G)
    mu = x.abs().mean(dim=0).clamp_min(1e-12)  # (D,)
    small = g.abs() < rel_tol * mu  # (N, D): r_ij < rel_tol
    return (small.sum(dim=0).double() / H.shape[0] > min_fraction).double().mean()


@host_float
def duplicate_fraction(
    H: torch.Tensor, *, threshold: float = 0.95, min_std: float = 1e-5
) -> torch.Tensor:
    """Fraction of units with a near-duplicate: |Pearson correlation| above `threshold`.

    rho_jk = corr(H_:j, H_:k) over the rows; unit j counts iff std_j > min_std and some other unit
    k with std_k > min_std has |rho_jk| > threshold. Both members of a pair count, so k exactly
    duplicated columns give 2k / D, and every unit of a model expanded by `core.cloning.expand`
    counts. Constant units (std <= min_std, e.g. dead ones) have no correlation and never count.
    The paper's POC scripts (paper_spec §2.2: |Pearson| > 0.95, std > 1e-5, both members).
    """
    check_matrix(H)
    x = _precise(H)
    x = x - x.mean(dim=0, keepdim=True)
    scatter = (x.T @ x).double()  # (D, D): H_c^T H_c
    norm = scatter.diagonal().clamp_min(0.0).sqrt()  # (D,): ||H_c[:, j]||
    varying = norm / max(H.shape[0] - 1, 1) ** 0.5 > min_std
    safe = torch.where(varying, norm, 1.0)
    corr = (scatter / safe[:, None] / safe[None, :]).abs() * (varying[:, None] & varying[None, :])
    corr.fill_diagonal_(0.0)
    return ((corr > threshold).any(dim=1) & varying).double().mean()


@host_float
def duplicate_fraction_cosine(H: torch.Tensor, *, threshold: float = 0.95) -> torch.Tensor:
    """The paper code's duplicate fraction: uncentred cosine similarity, lower index of a pair only.

    h~_j = H_:j / max(||H_:j||_2, 1e-12),  S = h~^T h~;  unit j counts iff S_jk > threshold for
    some k > j (no absolute value). A perfect x2 clone therefore scores at most 1/2, and
    non-negative units with a large mean score high even if uncorrelated (paper_spec §2.2).
    """
    check_matrix(H)
    x = _precise(H)
    gram = (x.T @ x).double()  # (D, D)
    norm = gram.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
    upper = torch.triu(gram / norm[:, None] / norm[None, :], diagonal=1)  # S_jk for k > j
    return (upper > threshold).any(dim=1).double().mean()


def shapiro_wilk_coefficients(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The Shapiro-Wilk coefficients a_1..a_n (ascending order statistics), float64.

    Royston (1992), "Approximating the Shapiro-Wilk W-test for non-normality" (algorithm AS R94,
    as in scipy.stats.shapiro): m_i = Phi^-1((i - 3/8) / (n + 1/4)), u = n^-1/2,
    a_n = m_n / ||m|| + 0.221157u - 0.147981u^2 - 2.071190u^3 + 4.434685u^4 - 2.706056u^5,
    a_{n-1} = m_{n-1} / ||m|| + 0.042981u - 0.293762u^2 - 1.752461u^3 + 5.682633u^4 - 3.582633u^5
    (n > 5 only), the other a_i = m_i / sqrt(phi) with phi chosen so that sum a_i^2 = 1, and
    a_{n+1-i} = -a_i. n = 3 has the exact a = (-sqrt(1/2), 0, sqrt(1/2)).
    """
    if n < 3:
        raise ValueError(f"the Shapiro-Wilk statistic needs at least 3 rows, got {n}")
    i = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    m = torch.special.ndtri((i - 0.375) / (n + 0.25))
    if n == 3:
        return torch.tensor([-(0.5**0.5), 0.0, 0.5**0.5], dtype=torch.float64, device=device)
    u = n**-0.5
    m2 = m.square().sum()
    poly_n = 0.221157 * u - 0.147981 * u**2 - 2.071190 * u**3 + 4.434685 * u**4 - 2.706056 * u**5
    poly_n1 = 0.042981 * u - 0.293762 * u**2 - 1.752461 * u**3 + 5.682633 * u**4 - 3.582633 * u**5
    a = torch.empty_like(m)
    a_n = m[-1] / m2.sqrt() + poly_n
    if n > 5:
        a_n1 = m[-2] / m2.sqrt() + poly_n1
        phi = (m2 - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * a_n**2 - 2 * a_n1**2)
        a[2:-2] = m[2:-2] / phi.sqrt()
        a[-2], a[1] = a_n1, -a_n1
    else:
        phi = (m2 - 2 * m[-1] ** 2) / (1 - 2 * a_n**2)
        a[1:-1] = m[1:-1] / phi.sqrt()
    a[-1], a[0] = a_n, -a_n
    return a


@host_float
def non_gaussianity(H: torch.Tensor, *, min_std: float = 1e-6) -> torch.Tensor:
    """Mean over units of 1 - W_j, W_j the Shapiro-Wilk statistic of column j (constant: 1).

    W_j = (sum_i a_i x_(i)j)^2 / sum_i (x_ij - mean_j)^2 over the sorted column x_(1)j <= ...,
    with the coefficients of `shapiro_wilk_coefficients` (Shapiro & Wilk 1965; Royston 1992).
    Columns with (unbiased) std < min_std score 1. The paper code's default score (paper_spec
    §2.8, "shapiro"), computed for all units at once on the device instead of one scipy call per
    unit. W is invariant to shifting and scaling a column.
    """
    check_matrix(H)
    x = H.double()
    a = shapiro_wilk_coefficients(x.shape[0], x.device)
    numerator = (a[:, None] * x.sort(dim=0).values).sum(dim=0).square()  # sum a_i = 0: no centring
    scatter = (x - x.mean(dim=0, keepdim=True)).square().sum(dim=0)
    constant = x.std(dim=0) < min_std
    w = (numerator / torch.where(constant, 1.0, scatter)).clamp_max(1.0)
    return torch.where(constant, 1.0, 1.0 - w).mean()


@host_float
def mean_weight_magnitude(W: torch.Tensor) -> torch.Tensor:
    """Mean absolute weight, (1/|W|) sum |w|, of one weight tensor (biases are separate tensors).

    Dohare et al. (2024) plot the mean |w| of each network's weight layers (cbp_bitflip_spec §d);
    the probe reports it for the weight feeding each declared layer's units.
    """
    return W.detach().abs().double().mean()
