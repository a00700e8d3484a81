"""Quadrature rules for expectations E[g(Z)] under Z ~ N(0, 1), in float64.

Two rules, both returned as (nodes z_i, weights w_i) with E[g(Z)] ~ sum_i w_i g(z_i):

- `gauss_hermite(n)`: Gauss-Hermite with the change of variables for the standard normal. numpy's
  nodes x_i and weights v_i integrate against exp(-x^2), so z_i = sqrt(2) x_i and w_i = v_i /
  sqrt(pi). (The reference code's `z = x / sqrt(2)` integrates against N(0, 1/4); docs/theory.md.)
  Exact for polynomials of degree <= 2n - 1, but only O(1/n) accurate across a kink: ReLU's zeta is
  off by 1.4e-3 with n = 200.
- `panel_rule(a, b, kinks)`: composite Gauss-Legendre for E[g(aZ + b)] on [-TAIL, TAIL], with
  panel edges at a uniform grid in z, at the kinks of g mapped to z = (k - b) / a, and at a uniform
  grid of pre-activations x in [-6, 6] mapped the same way (so a steep tanh(100 z) is resolved).
  Exact to rounding for piecewise-smooth g of moderate growth; the default everywhere in
  `core.theory`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TAIL = 12.0  # |z| > TAIL carries 3.6e-33 of the standard normal's mass
_DTYPE = torch.float64


def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n-point Gauss-Hermite nodes z and weights w for E[g(Z)], Z ~ N(0, 1) (1 <= n <= 360).

    z_i = sqrt(2) x_i, w_i = v_i / sqrt(pi), with (x_i, v_i) the rule for the weight exp(-x^2).
    """
    if not 1 <= n <= 360:
        raise ValueError(
            f"gauss_hermite needs 1 <= n <= 360 (numpy's weights overflow above), got {n}"
        )
    x, v = np.polynomial.hermite.hermgauss(n)
    return (
        torch.from_numpy(math.sqrt(2.0) * x).to(_DTYPE),
        torch.from_numpy(v / math.sqrt(math.pi)).to(_DTYPE),
    )


def panel_rule(
    a: float | torch.Tensor,
    b: float | torch.Tensor,
    kinks: tuple[float, ...] = (),
    panels: int = 48,
    order: int = 12,
    feature_edges: int = 25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z and weights w with E[g(aZ + b)] ~ sum_i w_i g(a z_i + b), for every (a, b) at once.

    `a` and `b` broadcast to a batch shape S; nodes and weights have shape S + (N,) with N =
    (panels + len(kinks) + feature_edges) * order. Edges: `panels` equal panels of [-TAIL, TAIL],
    the kinks (k - b) / a, and (x_j - b) / a for `feature_edges` points x_j evenly in [-6, 6], all
    clipped to [-TAIL, TAIL]. Each panel gets `order` Gauss-Legendre nodes; weights include the
    normal density. For a = 0 the extra edges collapse onto -TAIL (empty panels, zero weight).
    """
    a = torch.as_tensor(a, dtype=_DTYPE)
    b = torch.as_tensor(b, dtype=_DTYPE)
    a, b = torch.broadcast_tensors(a, b)
    shape = a.shape
    uniform = torch.linspace(-TAIL, TAIL, panels + 1, dtype=_DTYPE).expand(*shape, panels + 1)
    xs = torch.cat(
        [torch.tensor(kinks, dtype=_DTYPE), torch.linspace(-6.0, 6.0, feature_edges, dtype=_DTYPE)]
    )
    mapped = (xs - b[..., None]) / a[..., None]  # (S, K + F)
    mapped = torch.nan_to_num(mapped, nan=-TAIL, posinf=TAIL, neginf=-TAIL).clamp(-TAIL, TAIL)
    edges, _ = torch.sort(torch.cat([uniform, mapped], dim=-1), dim=-1)  # (S, E)
    t, v = np.polynomial.legendre.leggauss(order)
    t = torch.from_numpy(t).to(_DTYPE)
    v = torch.from_numpy(v).to(_DTYPE)
    half = (edges[..., 1:] - edges[..., :-1]) / 2  # (S, E - 1)
    mid = (edges[..., 1:] + edges[..., :-1]) / 2
    nodes = mid[..., None] + half[..., None] * t  # (S, E - 1, order)
    weights = half[..., None] * v * torch.exp(-(nodes**2) / 2) / math.sqrt(2.0 * math.pi)
    return nodes.flatten(-2), weights.flatten(-2)
