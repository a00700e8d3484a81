"""Clone blocks discovered from data, and frozen units (paper Theorem 2.1, parts 1 and 2).

Two units of a layer are clones on a batch when their forward values AND their back-propagated
errors coincide on every row (one sample, or one position of one sample):

    max_r |h_ri - h_rj| <= tol * max_rk |h_rk|   and   max_r |g_ri - g_rj| <= tol * max_rk |g_rk|

with h the layer's (rows, units) values and g = d loss / d h. The default tol is sqrt(eps) of the
values' dtype (3.5e-4 in float32, 1.5e-8 in float64): exact clones (`core.cloning.expand`) agree
bitwise, clones on an equitable manifold to rounding, and two independent units on a batch of more
than a few rows essentially never within it. Blocks are the classes of the relation, grouped
around each block's first unit; units whose values and errors are all zero are left out (nothing
distinguishes them: they are reported dead or frozen instead).
"""

from __future__ import annotations

import functools
import math

import torch


def default_tolerance(dtype: torch.dtype) -> float:
    """sqrt(eps) of `dtype` (float32: 3.5e-4; float64: 1.5e-8)."""
    return math.sqrt(torch.finfo(dtype).eps)


@functools.lru_cache(maxsize=4)
def _sketch_basis(rows: int, k: int, device: torch.device) -> torch.Tensor:
    """A fixed (rows, k) matrix with orthonormal columns (QR of a generic cosine pattern)."""
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(k, dtype=torch.float64)[None, :]
    q, _ = torch.linalg.qr(torch.cos(0.37 * r * (j + 1) + 1.3 * j) + 0.1 * torch.sin(2.1 * r + j))
    return q.to(device)


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
    h = values.detach().double()
    g = torch.zeros_like(h) if errors is None else errors.detach().double()
    rows, units = h.shape
    if units < 2 or rows == 0:
        return []
    bound_h, bound_g = tol * float(h.abs().max()), tol * float(g.abs().max())
    live = (h.abs().amax(dim=0) > 0) | (g.abs().amax(dim=0) > 0)
    basis = _sketch_basis(rows, min(16, rows), h.device)
    near_h = torch.cdist(h.T @ basis, h.T @ basis) <= math.sqrt(rows) * bound_h * (1 + 1e-9)
    near_g = torch.cdist(g.T @ basis, g.T @ basis) <= math.sqrt(rows) * bound_g * (1 + 1e-9)
    candidate = torch.triu(near_h & near_g & live[:, None] & live[None, :], diagonal=1)
    pairs = torch.nonzero(candidate).tolist()
    partners: dict[int, list[int]] = {}
    for i, j in pairs:
        if (
            float((h[:, i] - h[:, j]).abs().max()) <= bound_h
            and float((g[:, i] - g[:, j]).abs().max()) <= bound_g
        ):
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


def frozen_units(slopes: torch.Tensor, eps: float, fraction: float = 1.0) -> list[int]:
    """Units whose |phi'(pre-activation)| < eps on at least `fraction` of the rows.

    `slopes`: (rows, units), the activation's derivative at each row's pre-activation.
    """
    share = (slopes.abs() < eps).double().mean(dim=0)
    return torch.nonzero(share >= fraction - 1e-12).flatten().tolist()


def dead_units(values: torch.Tensor) -> list[int]:
    """Units whose value is exactly 0 on every row."""
    return torch.nonzero(values.abs().amax(dim=0) == 0).flatten().tolist()
