"""Clone partitions of a model's parameters and the manifolds of Theorem 2.1 (paper §2, App. A.3).

A clone partition groups the units of every hidden interface into blocks. On a parameter tensor it
gives, per dimension, the block of every index (`Axes`: a long tensor of block ids, or None for a
dimension whose indices are all separate). With PyTorch's [out, in, kernel...] orientation:

- block-constant (BC): every (out block x in block) sub-block is constant, per kernel position;
  the projector M onto BC is the block mean, the normal space N of BC is ker M (zero block sums);
- equitable (Theorem 2.1, paper App. A.3): each unit of an out block receives the same total from
  every in block (the paper's column sums, rows = sources: forward values stay cloned) and each
  unit of an in block sends the same total to every out block (its row sums: back-propagated
  errors stay cloned). With M0, M1 the block means along dims 0 and 1, W - M0 M1 W splits into
  three orthogonal parts: (M1 - M0 M1) W breaks the incoming sums, (M0 - M0 M1) W the outgoing
  sums, and (I - M0)(I - M1) W is a within-block redistribution, which keeps the clones exact.
  A tensor with one partitioned dimension (biases, norm parameters, first- and last-layer
  weights) is equitable only when block-constant.

Exact symmetry directions inside N (paper App. A.5; docs/theory.md "Manifold stability"):
- `equitable`: the redistributions (I - M0)(I - M1) of hidden-to-hidden weights,
  (|B0| - 1)(|B1| - 1) per block pair and kernel position. The loss is constant on the whole
  equitable manifold through a BC point and the gradient is tangent to it, so H maps its tangent
  space into itself and vanishes on these directions: H v = 0.
- `softmax_shift`: for the output layer's weight, the same zero-block-sum row vector added to every
  logit's row. Every logit moves by the same amount, which a softmax cross-entropy ignores at any
  parameters, so again H v = 0; |B| - 1 directions per input block.
The stability analysis checks numerically that a family is null for the loss at hand before it
removes it (`core.theory.stability.normal_hessian_spectrum`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

Axes = tuple[torch.Tensor | None, ...]  # per dimension: block id of every index, or None
Tensors = dict[str, torch.Tensor]
SYMMETRY_FAMILIES = ("equitable", "softmax_shift")


def block_average(t: torch.Tensor, dim: int, ids: torch.Tensor) -> torch.Tensor:
    """Every entry along `dim` replaced by the mean over its block (entries with equal `ids`).

    Averages deviations from each block's first entry and adds that entry back, so that a block of
    identical entries returns exactly their common value (a plain mean of three equal floats need
    not). Interleaved blocks of equal size (ids = 0 0 1 1 2 2 ...) take a reshape instead of
    index operations.
    """
    ids = ids.to(t.device)
    n_blocks = int(ids[-1]) + 1 if len(ids) else 0
    size, rem = divmod(len(ids), max(n_blocks, 1))
    if rem == 0 and torch.equal(
        ids, torch.arange(n_blocks, device=t.device).repeat_interleave(size)
    ):
        u = t.unflatten(dim, (n_blocks, size))
        first = u.narrow(dim + 1, 0, 1)
        return (
            (first + (u - first).mean(dim=dim + 1, keepdim=True)).expand_as(u).flatten(dim, dim + 1)
        )
    n_blocks = int(ids.max()) + 1
    first = torch.full((n_blocks,), len(ids), dtype=torch.long, device=t.device)
    first.scatter_reduce_(0, ids, torch.arange(len(ids), device=t.device), "amin")
    base = t.index_select(dim, first).index_select(dim, ids)
    shape = list(t.shape)
    shape[dim] = n_blocks
    sums = torch.zeros(shape, dtype=t.dtype, device=t.device).index_add_(dim, ids, t - base)
    counts = torch.bincount(ids, minlength=n_blocks).to(t.dtype)
    view = [1] * t.dim()
    view[dim] = n_blocks
    return base + (sums / counts.view(view)).index_select(dim, ids)


def _excess(ids: torch.Tensor | None) -> int:
    """sum over blocks of (|B| - 1): the dimension of the zero-block-sum vectors."""
    return 0 if ids is None else len(ids) - (int(ids.max()) + 1)


def _n_blocks(ids: torch.Tensor | None, n: int) -> int:
    return n if ids is None else int(ids.max()) + 1


@dataclass(frozen=True)
class CloneStructure:
    """The clone partition on every parameter: `axes[name]` per dimension (see module docstring).

    Parameters absent from `axes`, or whose axes are all None, have no normal part. `logits` names
    the output layer's weights (rows = logits, dim 1 partitioned): the softmax-shift candidates.
    """

    axes: dict[str, Axes]
    logits: tuple[str, ...] = field(default=())

    @classmethod
    def of_clone(cls, model: nn.Module) -> CloneStructure:
        """The planted partition of a model built by `core.cloning.expand` (block = base unit)."""
        from core.cloning.layout import root_layouts

        layouts = root_layouts(model.cfg)
        axes = {name: layouts[name].src for name, _ in model.named_parameters()}
        logits = tuple(
            name
            for name, src in axes.items()
            if len(src) == 2 and src[0] is None and src[1] is not None
        )
        return cls(axes, logits)

    def _partitioned(self, name: str) -> list[int]:
        return [d for d, ids in enumerate(self.axes.get(name, ())) if ids is not None]

    def _mean(self, name: str, t: torch.Tensor, dims: list[int]) -> torch.Tensor:
        for d in dims:
            t = block_average(t, d, self.axes[name][d])
        return t

    def block_mean(self, tensors: Tensors) -> Tensors:
        """The orthogonal projection onto the block-constant tensors, per tensor."""
        return {n: self._mean(n, t, self._partitioned(n)) for n, t in tensors.items()}

    def normal(self, tensors: Tensors) -> Tensors:
        """The orthogonal projection onto N: t - block_mean(t)."""
        means = self.block_mean(tensors)
        return {n: t - means[n] for n, t in tensors.items()}

    def _both(self, name: str, t: torch.Tensor) -> bool:
        axes = self.axes.get(name, ())
        return t.dim() >= 2 and len(axes) >= 2 and axes[0] is not None and axes[1] is not None

    def equitable_part(self, tensors: Tensors) -> Tensors:
        """The projection onto the within-block redistributions (I - M0)(I - M1), per tensor."""
        out = {}
        for n, t in tensors.items():
            if not self._both(n, t):
                out[n] = torch.zeros_like(t)
                continue
            rows, cols = self._mean(n, t, [1]), self._mean(n, t, [0])
            out[n] = t - rows - cols + self._mean(n, rows, [0])
        return out

    def shift_part(self, tensors: Tensors) -> Tensors:
        """The projection onto the softmax shifts: rows of the logits' weights made equal."""
        out = {}
        for n, t in tensors.items():
            if n not in self.logits:
                out[n] = torch.zeros_like(t)
                continue
            centred = t - self._mean(n, t, [1])
            out[n] = centred.mean(dim=0, keepdim=True).expand_as(t).clone()
        return out

    def reduced_normal(self, tensors: Tensors, removed: tuple[str, ...]) -> Tensors:
        """The projection onto N minus the symmetry families in `removed` (one pass per tensor).

        For a weight with both dims partitioned, N minus the redistributions is
        M1 t + M0 t - 2 M0 M1 t; the softmax shift acts on the logits' weights only.
        """
        out = {}
        for n, t in tensors.items():
            dims = self._partitioned(n)
            if not dims:
                out[n] = torch.zeros_like(t)
            elif "equitable" in removed and self._both(n, t):
                rows, cols = self._mean(n, t, [1]), self._mean(n, t, [0])
                out[n] = rows + cols - 2 * self._mean(n, rows, [0])
            else:
                out[n] = t - self._mean(n, t, dims)
            if "softmax_shift" in removed and n in self.logits:
                centred = t - self._mean(n, t, [1])
                out[n] = out[n] - centred.mean(dim=0, keepdim=True)
        return out

    def symmetry_part(self, family: str, tensors: Tensors) -> Tensors:
        """The projection onto one family of `SYMMETRY_FAMILIES`."""
        if family == "equitable":
            return self.equitable_part(tensors)
        if family == "softmax_shift":
            return self.shift_part(tensors)
        raise ValueError(
            f"unknown symmetry family {family!r}; valid: {', '.join(SYMMETRY_FAMILIES)}"
        )

    def distance(self, params: Tensors) -> float:
        """||theta - block_mean(theta)||_2: the distance to the block-constant manifold."""
        normal = self.normal({n: t.detach() for n, t in params.items()})
        return math.sqrt(sum(float(v.double().pow(2).sum()) for v in normal.values()))

    def equitability(self, params: Tensors) -> dict[str, dict[str, float]]:
        """Per partitioned tensor: ||normal||, and the parts that break the incoming sums
        (`incoming`: forward cloning), the outgoing sums (`outgoing`: backward cloning), and the
        within-block redistribution (`redistribution`), all absolute 2-norms, and ||t||.

        incoming^2 + outgoing^2 + redistribution^2 = normal^2. For a tensor with one partitioned
        dimension the whole normal part counts as `outgoing` when only dim 1 (the inputs of an
        output layer) is partitioned, else as `incoming`.
        """
        out = {}
        for n, t in params.items():
            dims = self._partitioned(n)
            if not dims:
                continue
            t = t.detach().double()
            full = self._mean(n, t, dims)
            if self._both(n, t):
                rows, cols = self._mean(n, t, [1]), self._mean(n, t, [0])
                parts = (rows - full, cols - full, t - rows - cols + full)
                incoming, outgoing, redistribution = (float(p.norm()) for p in parts)
            else:
                norm = float((t - full).norm())
                only_inputs = dims == [1]
                incoming, outgoing = (0.0, norm) if only_inputs else (norm, 0.0)
                redistribution = 0.0
            out[n] = {
                "norm": float(t.norm()),
                "normal": float((t - full).norm()),
                "incoming": incoming,
                "outgoing": outgoing,
                "redistribution": redistribution,
            }
        return out

    def dimensions(self, params: Tensors) -> dict[str, int]:
        """Parameter count, dim BC, dim N, and the size of each symmetry family."""
        total = bc = equitable = shift = 0
        for n, t in params.items():
            axes = self.axes.get(n, (None,) * t.dim())
            total += t.numel()
            bc += math.prod(_n_blocks(ids, size) for ids, size in zip(axes, t.shape))
            rest = math.prod(t.shape[2:])
            if self._both(n, t):
                equitable += _excess(axes[0]) * _excess(axes[1]) * rest
            if n in self.logits:
                shift += _excess(axes[1]) * rest
        return {
            "parameters": total,
            "block_constant": bc,
            "normal": total - bc,
            "equitable": equitable,
            "softmax_shift": shift,
        }
