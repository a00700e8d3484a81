"""Clone blocks discovered from data, and frozen units (paper Theorem 2.1, parts 1 and 2): the
partition that `core.diagnose` reports and that the probe's `diagnose` option records at every
probe (`partition_summary`).

Two units of a layer are clones on a batch when their forward values AND their back-propagated
errors coincide on every row (one sample, or one position of one sample):

    max_r |h_ri - h_rj| <= tol * max_rk |h_rk|   and   max_r |g_ri - g_rj| <= tol * max_rk |g_rk|

with h the layer's (rows, units) values and g = d loss / d h. The default tol is sqrt(eps) of the
values' dtype (3.5e-4 in float32, 1.5e-8 in float64): exact clones (`core.cloning.expand`) agree
bitwise, clones on an equitable manifold to rounding, and two independent units on a batch of more
than a few rows essentially never within it. Blocks are the classes of the relation, grouped
around each block's first unit; units whose values and errors are all zero are left out (nothing
distinguishes them: they are reported dead or frozen instead). A unit of an activation layer is
frozen when |phi'(pre-activation)| < FROZEN_EPS on every row (or a chosen fraction of them), phi'
taken by autograd through the activation module (`activation_slopes`), so any elementwise
activation module is covered.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

FROZEN_EPS = 1e-4  # |phi'| below this is flat (the paper's Fig. A.3 threshold for tanh, sigmoid)


def default_tolerance(dtype: torch.dtype) -> float:
    """sqrt(eps) of `dtype` (float32: 3.5e-4; float64: 1.5e-8)."""
    return math.sqrt(torch.finfo(dtype).eps)


@functools.lru_cache(maxsize=8)
def _sketch_rows(rows: int, k: int, device: torch.device) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A fixed (rows, k) matrix B with orthonormal columns, as (weight per row, group bounds):
    the rows fall into k contiguous groups, and column j is a generic positive pattern on group j,
    normalised (disjoint supports: orthonormal, and B^T M is one weighted sum per group)."""
    bounds = tuple(j * rows // k for j in range(k + 1))
    r = torch.arange(rows, dtype=torch.float64)
    weight = 1.5 + torch.cos(0.37 * r + 1.3) + 0.1 * torch.sin(2.1 * r)
    for a, b in zip(bounds, bounds[1:]):
        weight[a:b] /= weight[a:b].norm()
    return weight.to(device), bounds


def _sketch(M: torch.Tensor, weight: torch.Tensor, bounds: tuple[int, ...]) -> torch.Tensor:
    """(units, k) float64: B^T M for the B of `_sketch_rows`, one group of rows at a time (no
    float64 copy of all of M)."""
    parts = [weight[a:b] @ M[a:b].double() for a, b in zip(bounds, bounds[1:])]
    return torch.stack(parts, dim=1)


def _max_gap(M: torch.Tensor, i: int, j: int) -> float:
    """max_r |M_ri - M_rj|, the difference taken in float64 (exact for float32 entries)."""
    return float((M[:, i].double() - M[:, j].double()).abs().max())


def clone_blocks(
    values: torch.Tensor, errors: torch.Tensor | None, tolerance: float | None = None
) -> list[list[int]]:
    """Blocks (sorted lists of >= 2 unit indices, sorted by first index) of coinciding units.

    `values`, `errors`: (rows, units); `errors` None compares values only. Candidate pairs come
    from a 16-column orthonormal sketch of each unit's values and errors: a sketch never moves two
    units further apart than their 2-norm distance, itself at most sqrt(rows) times the max-abs
    bound, so no pair within tolerance is missed; every candidate pair is then checked on all
    rows. Each block gathers the unchecked units that match its first (smallest) unit.
    """
    tol = default_tolerance(values.dtype) if tolerance is None else tolerance
    h = values.detach()
    g = torch.zeros_like(h) if errors is None else errors.detach()
    rows, units = h.shape
    if units < 2 or rows == 0:
        return []
    top_h, top_g = h.abs().amax(dim=0).double(), g.abs().amax(dim=0).double()  # exact
    bound_h, bound_g = tol * float(top_h.max()), tol * float(top_g.max())
    live = (top_h > 0) | (top_g > 0)
    weight, bounds = _sketch_rows(rows, min(16, rows), h.device)
    sh, sg = _sketch(h, weight, bounds), _sketch(g, weight, bounds)
    near_h = torch.cdist(sh, sh) <= math.sqrt(rows) * bound_h * (1 + 1e-9)
    near_g = torch.cdist(sg, sg) <= math.sqrt(rows) * bound_g * (1 + 1e-9)
    candidate = torch.triu(near_h & near_g & live[:, None] & live[None, :], diagonal=1)
    pairs = torch.nonzero(candidate).tolist()
    partners: dict[int, list[int]] = {}
    for i, j in pairs:
        if _max_gap(h, i, j) <= bound_h and _max_gap(g, i, j) <= bound_g:
            partners.setdefault(i, []).append(j)
    blocks, taken = [], set()
    for first in sorted(partners):
        if first in taken:
            continue
        block = [first] + [j for j in partners[first] if j not in taken]
        if len(block) > 1:
            taken.update(block)
            blocks.append(sorted(block))
    return sorted(blocks)


def block_ids(blocks: list[list[int]], units: int) -> torch.Tensor | None:
    """The block id of every unit (singletons get their own), numbered by first unit; None when
    every block is a singleton."""
    if not blocks:
        return None
    label = torch.arange(units)
    for block in blocks:
        label[block] = block[0]
    return torch.unique(label, return_inverse=True)[1]


def activation_slopes(module: nn.Module, pre: torch.Tensor) -> torch.Tensor:
    """phi'(pre) elementwise for an elementwise activation module, by autograd."""
    x = pre.detach().requires_grad_(True)  # a new leaf sharing pre's storage
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(module(x).sum(), x)
    return grad


def frozen_units(slopes: torch.Tensor, eps: float = FROZEN_EPS, fraction: float = 1.0) -> list[int]:
    """Units whose |phi'(pre-activation)| < eps on at least `fraction` of the rows.

    `slopes`: (rows, units), the activation's derivative at each row's pre-activation.
    """
    share = (slopes.abs() < eps).sum(dim=0).double() / slopes.shape[0]
    return torch.nonzero(share >= fraction - 1e-12).flatten().tolist()


def dead_units(values: torch.Tensor) -> list[int]:
    """Units whose value is exactly 0 on every row."""
    return torch.nonzero(values.abs().amax(dim=0) == 0).flatten().tolist()


def partition_summary(
    values: torch.Tensor, errors: torch.Tensor, slopes: torch.Tensor | None = None
) -> dict[str, float]:
    """The probe's `diagnose` rows of one layer, from its (rows, units) values, errors (d loss /
    d values) and, for an activation layer, the slopes phi'(pre): `clone_blocks` (the number of
    blocks of `clone_blocks`, default tolerance), `cloned_fraction` (units in a block / units),
    `largest_clone_block` (units in the largest block; 0 without blocks) and, with `slopes`,
    `frozen_fraction_all_rows` (units of `frozen_units` at the defaults: |phi'| < FROZEN_EPS on
    every row, / units)."""
    units = values.shape[1]
    blocks = clone_blocks(values, errors)
    out = {
        "clone_blocks": float(len(blocks)),
        "cloned_fraction": sum(len(b) for b in blocks) / units,
        "largest_clone_block": float(max((len(b) for b in blocks), default=0)),
    }
    if slopes is not None:
        out["frozen_fraction_all_rows"] = len(frozen_units(slopes)) / units
    return out
