"""Per-unit metrics of an activation matrix H (N rows = samples, D columns = units) and, for
saturation, the gradient matrix G of the same layer (for frozen units, the pre-activations): the
fraction of units that are dead, dormant, frozen, saturated or duplicated, the per-unit activation
statistics, non-Gaussianity, and the mean weight magnitude.

The metrics that read every row are written in two steps, as the ranks are (core/metrics/ranks.py):
a per-unit statistic of all rows (`zero_fractions`, `mean_abs`, `small_gradient_fractions`,
`column_moments`), computed in one pass over blocks of consecutive rows, and a `*_of` function that
turns it into the metric. The probe computes each statistic once per layer and shares it (the
duplicate fractions and the unit statistics share one `column_moments`); the public functions
below compose the same two steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.metrics.ranks import check_matrix
from core.metrics.scalar import host_float
from core.models.blocks import LEAKY_RELU_SLOPE
from core.models.config import MODEL_ACTIVATIONS

# Entries per block of rows in the full-row passes (16 MiB of float32). A conv layer's matrix has
# 500*32*32 = 512,000 rows: an elementwise temporary of all of it (|H|, H - mean, a mask) costs
# more in fresh memory than its arithmetic, while many small blocks cost one dispatch (and, on a
# CPU, one wake-up of the intra-op threads) per operation; 16 MiB blocks are reused by the
# allocator and keep a layer to a few dozen operations.
BLOCK_ENTRIES = 1 << 22


def row_blocks(M: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """M split into blocks of consecutive rows of about BLOCK_ENTRIES entries (views, no copy)."""
    return M.split(max(1, BLOCK_ENTRIES // M.shape[1]))


def _precise(t: torch.Tensor) -> torch.Tensor:
    """`t` itself in float32/float64 (no copy: these metrics read every row of a conv map); half
    precisions are widened to float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _total(partials: list[torch.Tensor]) -> torch.Tensor:
    """The sum of per-block (D,) partial sums, in float64 (int64 for counts)."""
    stacked = torch.stack(partials)  # (blocks, D)
    return stacked.sum(dim=0) if not stacked.is_floating_point() else stacked.double().sum(dim=0)


def _share_above(fractions: torch.Tensor, threshold: float) -> torch.Tensor:
    """(1/D) sum_j 1[fractions_j > threshold]."""
    return (fractions > threshold).double().mean()


def zero_fractions(H: torch.Tensor, zero_tol: float = 1e-7) -> torch.Tensor:
    """z_j = (1/N) sum_i 1[|H_ij| < zero_tol or H_ij = 0], (D,) float64; zero_tol 0: exact zeros."""
    check_matrix(H)
    counts = [
        (b.abs() < zero_tol if zero_tol > 0 else b == 0).sum(dim=0, dtype=torch.int32)
        for b in row_blocks(H)
    ]  # |h| < tol includes h = 0; a block has fewer than 2^31 rows
    return _total(counts).double() / H.shape[0]


def mean_abs(H: torch.Tensor) -> torch.Tensor:
    """mu_j = (1/N) sum_i |H_ij|, (D,) float64 (summed in float64: no overflow)."""
    check_matrix(H)
    sums = [b.abs().sum(dim=0, dtype=torch.float64) for b in row_blocks(_precise(H))]
    return _total(sums) / H.shape[0]


def small_gradient_fractions(
    G: torch.Tensor, mu: torch.Tensor, rel_tol: float, grad_scale: float = 1.0
) -> torch.Tensor:
    """f_j = (1/N) sum_i 1[|s G_ij| / max(mu_j, 1e-12) < rel_tol], (D,) float64, s = grad_scale.

    mu is `mean_abs(H)` of the layer's activations. `grad_scale` multiplies G entry by entry
    before the test (the probe passes the batch-mean loss gradient and the batch size, which gives
    per-sample gradients without a scaled copy of G).
    """
    check_matrix(G)
    if mu.shape != (G.shape[1],):
        raise ValueError(f"mu has shape {tuple(mu.shape)}; G has {G.shape[1]} columns")
    g = _precise(G)
    bound = (rel_tol * mu.clamp_min(1e-12)).to(g.dtype)  # (D,): r_ij < rel_tol iff |s G_ij| < bound
    counts = [
        ((b if grad_scale == 1.0 else b * grad_scale).abs() < bound).sum(dim=0, dtype=torch.int32)
        for b in row_blocks(g)
    ]
    return _total(counts).double() / G.shape[0]


@dataclass(frozen=True)
class ColumnMoments:
    """First and second moments of the columns of H over its N rows, float64.

    `mean` (D,): (1/N) sum_i H_ij; `scatter`: H_c^T H_c with H_c = H - mean (D x D; its diagonal
    (D,) only, from `column_moments(H, cross=False)`); `gram`: H^T H (D x D; None without cross).
    """

    n: int
    mean: torch.Tensor
    scatter: torch.Tensor
    gram: torch.Tensor | None

    def std(self) -> torch.Tensor:
        """Per-unit sample std over the rows, sqrt(scatter_jj / (N - 1)) (0 for N = 1), (D,)."""
        scatter = self.scatter.diagonal() if self.scatter.dim() == 2 else self.scatter
        return (scatter.clamp_min(0.0) / max(self.n - 1, 1)).sqrt()


def column_moments(H: torch.Tensor, *, cross: bool = True) -> ColumnMoments:
    """The column moments of H (see `ColumnMoments`), from rows shifted by their approximate mean.

    Shifted-data algorithm: k = the column means (summed in float64) rounded to H's dtype (any
    k near the mean does); one pass over blocks of rows accumulates s = sum_i c_i (float64) and
    S = sum_i c_i c_i^T (one matrix product per block, in H's precision) of the shifted rows
    c_i = H_i - k. Then, exactly (c_i is H_i - k up to one rounding relative to c_i itself),
        mean = k + s / N,   scatter = S - s s^T / N,   gram = S + k s^T + s k^T + N k k^T.
    The centred scatter comes from shifted rows because the other order, H^T H - N m m^T,
    cancels: in float32 a unit with mean/std = 10^3 loses all of its variance to the rounding of
    H^T H. The uncentred gram is a sum of terms no larger than itself, so deriving it from S
    costs no precision; one pass gives both (the two duplicate fractions and the unit statistics
    share it). If S overflows H's precision (float32 rows beyond ~1e17), the pass is repeated in
    float64; non-finite entries of H give non-finite moments, which the metrics report as NaN.
    """
    check_matrix(H)
    x = _precise(H)
    moments = _shifted_moments(x, cross)
    if x.dtype != torch.float64 and not bool(torch.isfinite(moments.scatter).all()):
        moments = _shifted_moments(x.double(), cross)  # overflow of the fast pass (one sync)
    return moments


def _shifted_moments(x: torch.Tensor, cross: bool) -> ColumnMoments:
    n, d = x.shape
    shift = (x.sum(dim=0, dtype=torch.float64) / n).to(x.dtype)  # (D,): k, in x's dtype
    S = torch.zeros((d, d) if cross else (d,), dtype=x.dtype, device=x.device)
    sums = []
    for block in row_blocks(x):
        c = block - shift  # (rows, D)
        sums.append(c.sum(dim=0, dtype=torch.float64))
        if cross:
            S.addmm_(c.T, c)
        else:
            S += c.square().sum(dim=0)
    s, S, k = _total(sums), S.double(), shift.double()
    if not cross:
        return ColumnMoments(n, k + s / n, S - s * s / n, None)
    sk = torch.outer(s, k)
    gram = S + sk + sk.T + n * torch.outer(k, k)
    return ColumnMoments(n, k + s / n, S - torch.outer(s, s) / n, gram)


def _finite_or_nan(value: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """`value`, or NaN where any of `inputs` has a non-finite entry (overflow is never silent)."""
    finite = torch.stack([torch.isfinite(t).all() for t in inputs]).all()
    return torch.where(finite, value, torch.nan)


def dead_fraction_of(z: torch.Tensor, threshold: float = 0.95) -> torch.Tensor:
    """(1/D) sum_j 1[z_j > threshold] of the zero fractions z (see `dead_fraction`)."""
    return _share_above(z, threshold)


@host_float
def dead_fraction(
    H: torch.Tensor, *, threshold: float = 0.95, zero_tol: float = 1e-7
) -> torch.Tensor:
    """Fraction of units that are zero on more than `threshold` of the rows.

    z_j = (1/N) sum_i 1[|H_ij| < zero_tol or H_ij = 0],
    dead_fraction = (1/D) sum_j 1[z_j > threshold].
    The paper's code (paper §B.1.2, "dead" neurons): threshold 0.95, zero_tol 1e-7. `zero_tol=0`
    tests exact zeros: with threshold 0.99 that is Dohare et al. (2024)'s CIFAR "dormant units"
    (non-zero on fewer than 1% of the probe rows).
    """
    return dead_fraction_of(zero_fractions(H, zero_tol), threshold)


def dormancy_scores(H: torch.Tensor) -> torch.Tensor:
    """The ReDo score of every unit: s_j = mean_i |H_ij| / ((1/D) sum_k mean_i |H_ik|), shape (D,).

    Sokar et al. (2023). A layer whose activations are all zero scores 0 everywhere.
    """
    return _scores_of(mean_abs(H))


def _scores_of(mu: torch.Tensor) -> torch.Tensor:
    layer_mean = mu.mean()
    return mu / torch.where(layer_mean > 0, layer_mean, 1.0)


def dormant_ratio_of(mu: torch.Tensor, tau: float = 0.025) -> torch.Tensor:
    """Fraction of units with mu_j / mean_k mu_k <= tau, mu = `mean_abs(H)` (`dormant_ratio`)."""
    return (_scores_of(mu) <= tau).double().mean()


@host_float
def dormant_ratio(H: torch.Tensor, *, tau: float = 0.025) -> torch.Tensor:
    """Fraction of tau-dormant units (ReDo).

    s_j = mean_i |H_ij| / ((1/D) sum_k mean_i |H_ik|);  unit j is dormant iff s_j <= tau.
    Sokar et al. (2023), "The dormant neuron phenomenon in deep reinforcement learning". With
    tau = 0 a unit is dormant iff it is exactly zero on every row: Dohare et al. (2024)'s
    permuted-MNIST "dead units" (sum_i |H_ij| = 0). If every unit is zero, all are dormant.
    """
    return dormant_ratio_of(mean_abs(H), tau)


def saturated_fraction_of(f: torch.Tensor, min_fraction: float = 0.99) -> torch.Tensor:
    """(1/D) sum_j 1[f_j > min_fraction], f = `small_gradient_fractions` (see
    `saturated_fraction`)."""
    return _share_above(f, min_fraction)


@host_float
def saturated_fraction(
    H: torch.Tensor, G: torch.Tensor, *, rel_tol: float = 0.05, min_fraction: float = 0.99
) -> torch.Tensor:
    """Fraction of units whose loss gradient is small against their own mean activation.

    mu_j = max((1/N) sum_i |H_ij|, 1e-12),  r_ij = |G_ij| / mu_j,
    saturated_fraction = (1/D) sum_j 1[(1/N) sum_i 1[r_ij < rel_tol] > min_fraction].
    The paper's "saturated" rule (paper §B.1.2). It measures the gradient arriving at the unit's
    output from downstream, relative to the unit's activation size: a unit whose outgoing
    weights are small, or whose layer the loss barely depends on, reads saturated; a frozen unit
    (phi' ~ 0, which blocks the gradient flowing *into* its incoming weights) need not, since
    the gradient at its output is not what freezes it. Frozen units are `frozen_fraction`; on a
    tanh layer with every unit saturated (pre-activations ~ 20) this rule can read far below 1.
    What G is decides the threshold's meaning: the paper passes the gradient of the batch-mean
    loss, which scales as 1/(batch size), so its threshold 1e-4 depends on the probe size;
    per-sample gradients d loss_b / d H (= batch size x that gradient, as the probe passes)
    make the fraction independent of the batch size. rel_tol 0.05 on per-sample gradients is
    the paper's 1e-4 at its probe size of 500.
    """
    check_matrix(H)
    if G.shape != H.shape:
        raise ValueError(f"G has shape {tuple(G.shape)}, H has {tuple(H.shape)}; they must match")
    return saturated_fraction_of(small_gradient_fractions(G, mean_abs(H), rel_tol), min_fraction)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # torch.nn.SELU's constants


def _gelu_slope(x: torch.Tensor) -> torch.Tensor:
    """d/dx x Phi(x) = Phi(x) + x phi(x) (the exact, erf GELU of the models)."""
    cdf = 0.5 * torch.special.erfc(-x * 0.5**0.5)  # accurate far into the negative tail
    return cdf + x * torch.exp(-0.5 * x.square()) * (2 * torch.pi) ** -0.5


# phi'(x) of every model activation, in x's precision, written where 1 - f(x)^2 or f (1 - f)
# would round to 0 long before phi' does (tanh' = sech^2, sigmoid' = s(x) s(-x)).
ACTIVATION_SLOPES = {
    "relu": lambda x: (x > 0).to(x.dtype),
    "leaky_relu": lambda x: torch.where(x > 0, 1.0, torch.full_like(x, LEAKY_RELU_SLOPE)),
    "tanh": lambda x: torch.cosh(x).reciprocal().square(),
    "sigmoid": lambda x: torch.sigmoid(x) * torch.sigmoid(-x),
    "gelu": _gelu_slope,
    "elu": lambda x: torch.where(x > 0, 1.0, torch.exp(x)),
    "selu": lambda x: _SELU_SCALE * torch.where(x > 0, 1.0, _SELU_ALPHA * torch.exp(x)),
    "swish": lambda x: torch.sigmoid(x) + x * torch.sigmoid(x) * torch.sigmoid(-x),
    "identity": torch.ones_like,
}
assert tuple(ACTIVATION_SLOPES) == MODEL_ACTIVATIONS  # one derivative per model activation


def flat_slope_fractions(pre: torch.Tensor, activation: str, eps: float) -> torch.Tensor:
    """f_j = (1/N) sum_i 1[|phi'(pre_ij)| < eps], (D,) float64, phi the named model activation."""
    check_matrix(pre)
    if activation not in ACTIVATION_SLOPES:
        raise ValueError(
            f"unknown activation {activation!r}; valid: {', '.join(ACTIVATION_SLOPES)}"
        )
    slope = ACTIVATION_SLOPES[activation]
    counts = [
        (slope(b).abs() < eps).sum(dim=0, dtype=torch.int32) for b in row_blocks(_precise(pre))
    ]
    return _total(counts).double() / pre.shape[0]


def frozen_fraction_of(f: torch.Tensor, fraction: float = 0.99) -> torch.Tensor:
    """(1/D) sum_j 1[f_j >= fraction], f = `flat_slope_fractions` (see `frozen_fraction`)."""
    return (f >= fraction).double().mean()


@host_float
def frozen_fraction(
    pre: torch.Tensor, activation: str, eps: float = 1e-4, fraction: float = 0.99
) -> torch.Tensor:
    """Fraction of frozen units: |phi'(pre-activation)| < eps on at least `fraction` of the rows.

    f_j = (1/N) sum_i 1[|phi'(Z_ij)| < eps],  frozen_fraction = (1/D) sum_j 1[f_j >= fraction],
    with Z (N x D) the pre-activations (the activation's input) and phi one of the model
    activations (core.models.MODEL_ACTIVATIONS). A frozen unit passes (almost) no gradient to its
    incoming weights on any input: the frozen-unit manifold of paper §2 (Theorem 2.1), where
    gradient descent cannot move them. ReLU's dead units (Z <= 0 everywhere) are the case
    phi' = 0; tanh and sigmoid freeze by saturating, ELU/SELU/GELU in their negative tails;
    leaky ReLU (phi' >= 0.1) and the identity never freeze for eps <= 0.1. eps 1e-4 is the
    threshold the paper's Fig. A.3 uses for tanh and sigmoid.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return frozen_fraction_of(flat_slope_fractions(pre, activation, eps), fraction)


def duplicate_fraction_of(
    m: ColumnMoments, threshold: float = 0.95, min_std: float = 1e-5
) -> torch.Tensor:
    """The |Pearson| duplicate fraction from the column moments (see `duplicate_fraction`)."""
    scatter = m.scatter  # (D, D): H_c^T H_c
    norm = scatter.diagonal().clamp_min(0.0).sqrt()  # (D,): ||H_c[:, j]||
    varying = norm / max(m.n - 1, 1) ** 0.5 > min_std
    safe = torch.where(varying, norm, 1.0)
    corr = (scatter / safe[:, None] / safe[None, :]).abs() * (varying[:, None] & varying[None, :])
    corr.fill_diagonal_(0.0)
    duplicated = ((corr > threshold).any(dim=1) & varying).sum().double()
    return _finite_or_nan(duplicated / varying.sum().clamp_min(1).double(), scatter)


@host_float
def duplicate_fraction(
    H: torch.Tensor, *, threshold: float = 0.95, min_std: float = 1e-5
) -> torch.Tensor:
    """Fraction of the non-constant units that have a near-duplicate (|Pearson| > `threshold`).

    Over the V units with (sample) std_j > min_std: unit j counts iff some other such unit k has
    |rho_jk| > threshold, rho the Pearson correlation over the rows; the fraction is
    #counted / V (0 if V = 0). Both members of a pair count, so k exactly duplicated columns
    among V varying ones give 2k / V, and every varying unit of a model expanded by
    `core.cloning.expand` counts. Constant units (e.g. dead ones) have no correlation: they are
    neither counted nor in the denominator. The rule of the paper's proof-of-concept scripts,
    which filter std > 1e-5 before correlating (docs/metrics.md).
    """
    return duplicate_fraction_of(column_moments(H), threshold, min_std)


def duplicate_fraction_cosine_of(m: ColumnMoments, threshold: float = 0.95) -> torch.Tensor:
    """The paper code's duplicate fraction from the column moments' gram (see
    `duplicate_fraction_cosine`)."""
    gram = m.gram  # (D, D): H^T H
    norm = gram.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
    upper = torch.triu(gram / norm[:, None] / norm[None, :], diagonal=1)  # S_jk for k > j
    return _finite_or_nan((upper > threshold).any(dim=1).double().mean(), gram)


@host_float
def duplicate_fraction_cosine(H: torch.Tensor, *, threshold: float = 0.95) -> torch.Tensor:
    """The paper code's duplicate fraction: uncentred cosine similarity, lower index of a pair only.

    h~_j = H_:j / max(||H_:j||_2, 1e-12),  S = h~^T h~;  unit j counts iff S_jk > threshold for
    some k > j (no absolute value); the fraction is over all D units. A perfect x2 clone
    therefore scores at most 1/2, and non-negative units with a large mean score high even if
    uncorrelated (paper §B.1.2, "duplicate" neurons).
    """
    return duplicate_fraction_cosine_of(column_moments(H), threshold)


def unit_mean_std(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-unit statistics the paper's code stores, (D,) each, float64:

    mean_j = (1/N) sum_i H_ij,  std_j = sqrt((1/(N-1)) sum_i (H_ij - mean_j)^2),
    the sample std over rows with Bessel's correction (torch's `Tensor.std`, which the paper's
    code calls on the activations). A single row has no spread: std_j = 0 for N = 1.
    """
    m = column_moments(H, cross=False)
    return m.mean, m.std()


def _spread(v: torch.Tensor, ddof: int) -> torch.Tensor:
    """sqrt(sum_j (v_j - mean v)^2 / (D - ddof)) across the D units; 0 where D <= ddof."""
    if v.numel() <= ddof:
        return torch.zeros((), dtype=v.dtype, device=v.device)
    return v.std(correction=ddof)


def unit_statistics_of(
    means: torch.Tensor, stds: torch.Tensor, ddof: int = 1
) -> dict[str, torch.Tensor]:
    """The paper's summaries of the per-unit statistics (see `unit_mean_std`), 0-d tensors:

    mean_of_means = (1/D) sum_j mean_j,  std_of_means = spread over units of mean_j,
    mean_of_stds = (1/D) sum_j std_j,    std_of_stds = spread over units of std_j,
    the spread sqrt(sum_j (v_j - mean v)^2 / (D - ddof)): ddof 1 the sample std (0 for D = 1),
    ddof 0 numpy's `.std()`, which the paper's code applies to the per-unit values.
    """
    return {
        "mean_of_means": means.mean(),
        "std_of_means": _spread(means, ddof),
        "mean_of_stds": stds.mean(),
        "std_of_stds": _spread(stds, ddof),
    }


@host_float
def mean_of_means(H: torch.Tensor) -> torch.Tensor:
    """(1/D) sum_j mean_j, the layer's mean of the per-unit means over rows (formulas in
    `unit_mean_std` and `unit_statistics_of`)."""
    return unit_statistics_of(*unit_mean_std(H))["mean_of_means"]


@host_float
def std_of_means(H: torch.Tensor, *, ddof: int = 1) -> torch.Tensor:
    """The spread across units of the per-unit means over rows (`unit_statistics_of`; ddof 1:
    the sample std, 0 for D = 1; ddof 0: the paper code's numpy `.std()`)."""
    return unit_statistics_of(*unit_mean_std(H), ddof)["std_of_means"]


@host_float
def mean_of_stds(H: torch.Tensor) -> torch.Tensor:
    """(1/D) sum_j std_j, the mean of the per-unit sample stds over rows (`unit_mean_std`)."""
    return unit_statistics_of(*unit_mean_std(H))["mean_of_stds"]


@host_float
def std_of_stds(H: torch.Tensor, *, ddof: int = 1) -> torch.Tensor:
    """The spread across units of the per-unit sample stds over rows (`unit_statistics_of`;
    ddof 1: the sample std, 0 for D = 1; ddof 0: the paper code's numpy `.std()`)."""
    return unit_statistics_of(*unit_mean_std(H), ddof)["std_of_stds"]


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
    Columns with (unbiased) std < min_std score 1. The paper code's default score
    ("shapiro"), computed for all units at once on the device instead of one scipy call per
    unit. W is invariant to shifting and scaling a column.
    """
    check_matrix(H)
    n = H.shape[0]
    a = shapiro_wilk_coefficients(n, H.device)
    ordered = _precise(H).sort(dim=0).values.double()  # widening to float64 keeps the order
    numerator = (a @ ordered).square()  # (D,); sum a_i = 0: no centring
    x = H.double()
    scatter = (x - x.mean(dim=0, keepdim=True)).square().sum(dim=0)
    constant = (scatter / (n - 1)).sqrt() < min_std  # the sample std
    w = (numerator / torch.where(constant, 1.0, scatter)).clamp_max(1.0)
    return torch.where(constant, 1.0, 1.0 - w).mean()


@host_float
def mean_weight_magnitude(W: torch.Tensor) -> torch.Tensor:
    """Mean absolute weight, (1/|W|) sum |w|, of one weight tensor (biases are separate tensors).

    Dohare et al. (2024) plot the mean |w| of each network's weight layers (docs/metrics.md);
    the probe reports it for the weight feeding each declared layer's units.
    """
    return W.detach().abs().double().mean()
