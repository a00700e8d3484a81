"""Hermite coefficients, correlation kernels, decorrelation strength and frozen probability.

Conventions (paper §3 and App. A.1-A.2; docs/theory.md). Z ~ N(0, 1); h_k = He_k / sqrt(k!) is
the orthonormal probabilists' Hermite basis, E[h_k(Z) h_l(Z)] = delta_kl. An activation f is
modulated as f_{a,b}(x) = f(a x + b) and normalised to mean 0 and variance 1 under N(0, 1):

    f~(x) = (f(a x + b) - mu) / sigma,   mu = E f(aZ + b),   sigma^2 = Var f(aZ + b),

so that f~ = sum_{k>=1} c_k h_k with c_k = E[f~(Z) h_k(Z)] and sum_{k>=1} c_k^2 = 1. By Mehler's
identity the correlation kernel, for (X, Y) standard normal with correlation rho, is

    kappa(rho) = E[f~(X) f~(Y)] = sum_{k>=1} c_k^2 rho^k,

with kappa(0) = 0, kappa(1) = 1, |kappa(rho)| <= |rho|, kappa'(0) = c_1^2. The decorrelation
strength (Theorem 3.1) is zeta_f = 1 - c_1^2, with c_1 = E[Z f~(Z)] = a E[f'(aZ + b)] / sigma
(Stein's lemma).
A unit whose output is constant to rounding, sd f(aZ + b) <= 1e-13 * rms f(aZ + b), is fully
frozen and gets zeta = 1 by convention. The threshold is relative because zeta is invariant under
f -> p f + q: an absolute one (Var < 1e-12) calls ELU(0.3 z - 15) = -1 + e^(-15) e^(0.3 z)
frozen, whose zeta is 0.044; 1e-13 sits just above the quadrature's rounding (docs/theory.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from core.theory.activations import ActivationLike, resolve
from core.theory.gaussian import TAIL, panel_rule

FROZEN_RELATIVE_STD = 1e-13  # sd / rms of f(aZ + b) at or below this: frozen, zeta := 1
KERNEL_METHODS = ("auto", "closed", "interpolant", "series", "quadrature")
SERIES_RHO = 0.9  # the interpolant uses the Hermite series for |rho| <= SERIES_RHO
SERIES_TERMS = 300  # ... with this many terms (truncation error < 0.9^301 < 1e-13)
INTERPOLANT_NODES = 13  # Chebyshev-Lobatto points per piece of the interpolant near rho = +-1
INTERPOLANT_TOL = 1e-11  # ... and the bound on each piece's last two Chebyshev coefficients
_DTYPE = torch.float64


def hermite_functions(z: torch.Tensor, terms: int) -> torch.Tensor:
    """(..., terms + 1): the orthonormal Hermite polynomials h_0(z) .. h_terms(z).

    Recurrence h_0 = 1, h_1 = z, h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1).
    """
    h = [torch.ones_like(z), z]
    for k in range(1, terms):
        h.append((z * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1))
    return torch.stack(h[: terms + 1], dim=-1)


def _moments(
    activation: ActivationLike,
    a: float,
    b: float,
    rule: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[float, float, float, bool]:
    """(mu, sigma^2, E[Z f(aZ + b)], frozen) by `rule` (default: the panel rule)."""
    act = resolve(activation)
    z, w = rule if rule is not None else panel_rule(a, b, act.kinks)
    fz = act(a * z + b)
    mean = float(w @ fz)
    var = float(w @ (fz - mean) ** 2)
    frozen = var <= FROZEN_RELATIVE_STD**2 * float(w @ fz**2)
    return mean, var, float(w @ (z * fz)), frozen


def normalised_activation(
    activation: ActivationLike, a: float = 1.0, b: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """f~(x) = (f(a x + b) - mu) / sigma: mean 0 and variance 1 under N(0, 1).

    Raises ValueError for a frozen unit (constant to rounding), which has no normalised form.
    """
    act = resolve(activation)
    mean, var, _, frozen = _moments(act, a, b)
    if frozen:
        raise ValueError(
            f"{act.name}(a x + b) with a={a}, b={b} is constant under N(0, 1) "
            f"(variance {var:.3g}); it has no normalised form"
        )
    std = math.sqrt(var)

    def normalised(x: torch.Tensor) -> torch.Tensor:
        return (act(a * x + b) - mean) / std

    normalised.__name__ = f"normalised_{act.name}"
    return normalised


def hermite_coefficients(
    activation: ActivationLike,
    terms: int = 64,
    a: float = 1.0,
    b: float = 0.0,
    rule: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(terms + 1,) float64: c_k = E[f~(Z) h_k(Z)] of the normalised f~, k = 0 .. terms.

    c_0 = 0 and sum_k c_k^2 = 1 up to truncation. `rule` is (nodes, weights) for E[g(Z)], e.g.
    `gauss_hermite(n)`, used for the normalisation and the projections alike; the default is the
    panel rule with the activation's kinks. Raises ValueError for a frozen unit.
    """
    act = resolve(activation)
    z, w = rule if rule is not None else panel_rule(a, b, act.kinks)
    mean, var, _, frozen = _moments(act, a, b, (z, w))
    if frozen:
        raise ValueError(f"{act.name}(a x + b) with a={a}, b={b} is frozen; it has no expansion")
    f = (act(a * z + b) - mean) / math.sqrt(var)
    return (w * f) @ hermite_functions(z, terms)


def decorrelation_strength(activation: ActivationLike, a: float = 1.0, b: float = 0.0) -> float:
    """zeta_f = 1 - c_1^2 of the normalised f(a x + b) (Theorem 3.1, Lemma A.1).

    c_1 = E[Z f(aZ + b)] / sigma. zeta = 0 for a linear f; zeta(ReLU) = 1 - pi / (2 pi - 2);
    zeta(sign) = 1 - 2 / pi; a frozen unit (constant to rounding) gets zeta = 1.
    """
    _, var, cross, frozen = _moments(activation, a, b)
    if frozen:
        return 1.0
    return float(max(0.0, 1.0 - cross**2 / var))


def relu_kernel(rho: npt.ArrayLike) -> np.ndarray:
    """kappa of the normalised ReLU in closed form (first-order arc-cosine kernel).

    E[relu X relu Y] = (sqrt(1 - rho^2) + rho (pi - arccos rho)) / (2 pi), mean 1 / sqrt(2 pi),
    variance 1/2 - 1/(2 pi), so kappa = (E[relu X relu Y] - 1/(2 pi)) / (1/2 - 1/(2 pi)).
    """
    rho = np.clip(np.asarray(rho, dtype=np.float64), -1.0, 1.0)
    second = (np.sqrt(1.0 - rho**2) + rho * (np.pi - np.arccos(rho))) / (2.0 * np.pi)
    return (second - 1.0 / (2.0 * np.pi)) / (0.5 - 1.0 / (2.0 * np.pi))


def sign_kernel(rho: npt.ArrayLike) -> np.ndarray:
    """kappa of sign (already normalised) in closed form: (2 / pi) arcsin rho."""
    rho = np.clip(np.asarray(rho, dtype=np.float64), -1.0, 1.0)
    return (2.0 / np.pi) * np.arcsin(rho)


def kernel_series(coefficients: torch.Tensor) -> Callable[[npt.ArrayLike], np.ndarray]:
    """rho -> sum_{k>=1} c_k^2 rho^k for the given Hermite coefficients c_0 .. c_K.

    Truncation only lowers |kappa| toward the bound of Lemma A.1 (its proof uses only
    sum_{k>=2} c_k^2 <= 1 - c_1^2), so the bounds hold for the series as for kappa itself.
    """
    power = coefficients.detach().cpu().numpy() ** 2
    power[0] = 0.0

    def series(rho: npt.ArrayLike) -> np.ndarray:
        return np.polynomial.polynomial.polyval(np.asarray(rho, dtype=np.float64), power)

    return series


SMOOTHING_OFFSETS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # in units of the inner std


def _smoothed_kinks(
    kinks: tuple[float, ...], r: float, s: float, a: float, b: float
) -> tuple[float, ...]:
    """Extra outer panel edges (as pre-activations of f(a x + b)) around each x where the inner
    mean a r x + b crosses a kink k: there E[f(aY + b) | X = x] is a kink smoothed over a width
    s / |r| in x, too sharp for the outer panels once s is small (error ~1e-7 at s = 0.03)."""
    if not kinks or abs(r) < 1e-3 or s >= 0.5:
        return ()
    edges = []
    for k in kinks:
        centre = (k - b) / (a * r)
        for m in SMOOTHING_OFFSETS:
            for sign in (1.0, -1.0) if m else (1.0,):
                edges.append(a * (centre + sign * m * s / abs(r)) + b)
    return tuple(edges)


def kernel_quadrature(
    activation: ActivationLike, rho: npt.ArrayLike, a: float = 1.0, b: float = 0.0
) -> np.ndarray:
    """kappa(rho) = E[f~(X) f~(Y)] by direct two-dimensional quadrature (no series truncation).

    With Y = rho X + sqrt(1 - rho^2) Z', the inner expectation over Z' given X = x is a modulated
    one-dimensional one, f(a sqrt(1 - rho^2) Z' + a rho x + b), taken by the panel rule with the
    kinks placed for each x; the outer one is the panel rule over X, with extra edges where the
    inner expectation has a smoothed kink (`_smoothed_kinks`). Accurate to ~1e-13 for the named
    activations at every rho (tested against closed forms); ~1e6 evaluations of f per rho.
    """
    act = resolve(activation)
    mean, var, _, frozen = _moments(act, a, b)
    if frozen:
        raise ValueError(f"{act.name}(a x + b) with a={a}, b={b} is frozen; kappa is undefined")
    std = math.sqrt(var)
    rho_t = torch.as_tensor(np.asarray(rho, dtype=np.float64)).clamp(-1.0, 1.0)
    flat = rho_t.flatten()
    out = torch.empty(flat.numel(), dtype=_DTYPE)
    for i, r in enumerate(flat.tolist()):
        s = math.sqrt(max(0.0, 1.0 - r * r))
        x, wx = panel_rule(a, b, act.kinks + _smoothed_kinks(act.kinks, r, s, a, b))  # (N,)
        fx = (act(a * x + b) - mean) / std
        shift = a * r * x + b  # (N,)
        y, wy = panel_rule(a * s, shift, act.kinks)  # (N, M)
        inner = (wy * act(a * s * y + shift[:, None])).sum(dim=-1)  # E[f | X = x]
        out[i] = ((inner - mean) / std) @ (wx * fx)
    return out.reshape(rho_t.shape).numpy()


def _closed_form(act_name: str, a: float, b: float) -> Callable[[npt.ArrayLike], np.ndarray] | None:
    """The closed-form kappa of f(a x + b), when there is one (relu, sign with b = 0; identity)."""
    if act_name == "identity" and a != 0:
        return lambda rho: np.clip(np.asarray(rho, dtype=np.float64), -1.0, 1.0)
    if b == 0 and a > 0:
        return {"relu": relu_kernel, "sign": sign_kernel}.get(act_name)
    return None


def _lobatto(lo: float, hi: float, n: int) -> np.ndarray:
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * np.arange(n) / (n - 1))


def _barycentric(nodes: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The polynomial through (nodes, values) at x, nodes Chebyshev-Lobatto (second form)."""
    w = (-1.0) ** np.arange(len(nodes))
    w[0] /= 2
    w[-1] /= 2
    diff = x[:, None] - nodes[None, :]
    exact = diff == 0
    diff[exact] = 1.0
    terms = w / diff
    out = (terms @ values) / terms.sum(axis=1)
    hit = exact.any(axis=1)
    out[hit] = values[exact[hit].argmax(axis=1)]
    return out


def _chebyshev_tail(values: np.ndarray) -> float:
    """|c_{n-2}| + |c_{n-1}| of the Chebyshev series through values at n Lobatto points."""
    n = len(values)
    j = np.arange(n)
    w = np.ones(n)
    w[0] = w[-1] = 0.5
    k = np.array([n - 2, n - 1])
    c = (2.0 / (n - 1)) * (np.cos(np.pi * np.outer(k, j) / (n - 1)) @ (w * values))
    c[-1] /= 2
    return float(np.abs(c).sum())


def kernel_interpolant(
    activation: ActivationLike,
    a: float = 1.0,
    b: float = 0.0,
    tol: float = INTERPOLANT_TOL,
) -> Callable[[npt.ArrayLike], np.ndarray]:
    """kappa of the normalised f(a x + b) to 1e-10: the Hermite series, quadrature near +-1.

    For |rho| <= SERIES_RHO (0.9) the series sum_{k<=SERIES_TERMS} c_k^2 rho^k, whose truncation
    error is below 0.9^301 < 1e-13. Near rho = +-1, where a kink or a jump of f makes kappa
    singular in rho ((1 - rho^2)^(k + 1/2) terms), kappa is interpolated in theta = arccos rho
    (in which those terms are smooth) from `kernel_quadrature` at INTERPOLANT_NODES (13)
    Chebyshev-Lobatto points per piece; a piece is halved until the last two Chebyshev
    coefficients sum to at most `tol`. 26 quadrature evaluations for a kernel analytic in theta
    (ReLU, sign, the smooth activations), more where a bias makes it flat at rho = -1.
    """
    act = resolve(activation)
    series = kernel_series(hermite_coefficients(act, SERIES_TERMS, a, b))
    theta0 = math.acos(SERIES_RHO)
    n = INTERPOLANT_NODES
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    pending = [(0.0, theta0, 0), (math.pi - theta0, math.pi, 0)]
    while pending:
        nodes = [_lobatto(lo, hi, n) for lo, hi, _ in pending]
        values = kernel_quadrature(act, np.cos(np.concatenate(nodes)), a, b).reshape(-1, n)
        split = []
        for (lo, hi, depth), x, v in zip(pending, nodes, values):
            if _chebyshev_tail(v) <= tol or depth >= 8:
                pieces.append((x, v))
            else:
                mid = (lo + hi) / 2
                split += [(lo, mid, depth + 1), (mid, hi, depth + 1)]
        pending = split
    pieces.sort(key=lambda p: p[0].min())
    edges = np.array([p[0].min() for p in pieces])

    def kappa(rho: npt.ArrayLike) -> np.ndarray:
        r = np.clip(np.asarray(rho, dtype=np.float64), -1.0, 1.0)
        flat = r.reshape(-1)
        out = series(flat)
        ends = np.abs(flat) > SERIES_RHO
        if ends.any():
            theta = np.arccos(flat[ends])
            which = np.clip(np.searchsorted(edges, theta, side="right") - 1, 0, len(pieces) - 1)
            vals = np.empty(theta.shape)
            for i in np.unique(which):
                sel = which == i
                vals[sel] = _barycentric(*pieces[i], theta[sel])
            out[ends] = vals
        return out.reshape(r.shape)

    return kappa


def kernel(
    activation: ActivationLike,
    a: float = 1.0,
    b: float = 0.0,
    method: str = "auto",
    terms: int = 64,
) -> Callable[[npt.ArrayLike], np.ndarray]:
    """The correlation kernel kappa of the normalised f(a x + b), as a function of rho.

    kappa(rho) = E[f~(X) f~(Y)] = sum_{k>=1} c_k^2 rho^k (Mehler; paper App. A.1).
    `method`: "closed" (ReLU and sign with b = 0, identity), "interpolant"
    (`kernel_interpolant`: agrees with the quadrature to 1e-10 for every activation, scale and
    bias), "series" (`terms` Hermite terms: its truncation error at |rho| -> 1 is 2e-3 for a biased
    ReLU, 1e-1 for a step), "quadrature" (`kernel_quadrature`, exact but ~0.1 s per rho), or
    "auto" (default): closed when there is one, else the interpolant (cached per named activation,
    a and b). The returned function maps a float or an array of rho in [-1, 1] to a float64 array
    of the same shape.
    """
    if method not in KERNEL_METHODS:
        raise ValueError(f"unknown kernel method {method!r}; valid: {', '.join(KERNEL_METHODS)}")
    act = resolve(activation)
    if method in ("auto", "closed"):
        closed = _closed_form(act.name, a, b) if isinstance(activation, str) else None
        if closed is not None:
            return closed
        if method == "closed":
            raise ValueError(
                f"no closed-form kernel for {act.name} with a={a}, b={b}; closed forms exist for "
                "relu and sign with b=0 and a>0, and for identity; use method='interpolant'"
            )
    if method == "quadrature":
        return lambda rho: kernel_quadrature(act, rho, a, b)
    if method == "series":
        return kernel_series(hermite_coefficients(act, terms, a, b))
    if isinstance(activation, str):
        return _cached_interpolant(activation, float(a), float(b))
    return kernel_interpolant(act, a, b)


@functools.lru_cache(maxsize=256)
def _cached_interpolant(name: str, a: float, b: float) -> Callable[[npt.ArrayLike], np.ndarray]:
    return kernel_interpolant(name, a, b)


def frozen_probability(
    activation: ActivationLike, a: float = 1.0, b: float = 0.0, eps: float = 1e-4
) -> float:
    """P(|f_{a,b}'(Z)| < eps) = P(|a f'(aZ + b)| < eps), Z ~ N(0, 1): the unit passes no gradient.

    The derivative is that of the modulated activation z -> f(az + b) (paper Fig. A.2-A.3; this
    reproduces the paper's tanh table of Fig. A.2; docs/theory.md).
    The set {z : |a f'(az + b)| < eps} is located on a grid of 12,001 points over [-12, 12], each
    change of state refined by bisection to rounding, and its normal mass summed exactly with Phi;
    the state at +-12 extends to +-infinity. Frozen intervals narrower than the grid step (2e-3),
    such as the 1e-8-wide one around GELU's minimum at eps = 1e-8, are missed. For ReLU (a > 0,
    a > eps) this is Phi(-b / a).
    """
    act = resolve(activation)

    def frozen(z: torch.Tensor) -> torch.Tensor:
        return (a * act.derivative(a * z + b)).abs() < eps

    grid = torch.linspace(-TAIL, TAIL, 12_001, dtype=_DTYPE)
    state = frozen(grid)
    cells = torch.nonzero(state[1:] != state[:-1]).flatten()
    lo, hi = grid[cells], grid[cells + 1]
    lo_state = state[cells]
    for _ in range(50):  # 2e-3 / 2^50: below rounding
        mid = (lo + hi) / 2
        same = frozen(mid) == lo_state
        lo = torch.where(same, mid, lo)
        hi = torch.where(same, hi, mid)
    inf = torch.tensor([math.inf], dtype=_DTYPE)
    edges = torch.cat([-inf, (lo + hi) / 2, inf])
    seg_state = torch.cat([state[:1], ~lo_state])  # state of each segment between edges
    mass = torch.special.ndtr(edges[1:]) - torch.special.ndtr(edges[:-1])
    return float(mass[seg_state].sum())
