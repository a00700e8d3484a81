"""Geometry of the cloning manifold of a cloned model (paper §A.3, paper_spec §4.5-4.6, §8.6).

For a model with `clone_factor` E > 1, the block-constant (BC) set holds every parameter whose
entries are constant on each block (clones of one base entry, per `root_layouts`). Its tangent
space is the BC tensors; the normal space is the tensors with zero mean on every block. The
projection onto BC is the block mean; `normal_component` is the orthogonal projector onto the
normal space. Tensors that expansion leaves untouched (e.g. the output bias) have trivial blocks
and no normal component.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from core.cloning.layout import TensorLayout, root_layouts


def _group_mean(t: torch.Tensor, dim: int, src: torch.Tensor) -> torch.Tensor:
    """Replace each entry along `dim` by the mean over its block (entries with the same src).

    Computed as first + mean(t - first), first being the block's first entry: the same number in
    exact arithmetic, and exactly the common value when a block's entries are identical (a plain
    mean of three equal floats need not return that float).
    """
    src = src.to(t.device)
    n_groups = int(src.max()) + 1
    first_index = torch.full((n_groups,), len(src), dtype=torch.long, device=t.device)
    first_index.scatter_reduce_(0, src, torch.arange(len(src), device=t.device), "amin")
    first = t.index_select(dim, first_index).index_select(dim, src)
    dev = t - first
    shape = list(t.shape)
    shape[dim] = n_groups
    sums = torch.zeros(shape, dtype=t.dtype, device=t.device).index_add_(dim, src, dev)
    counts = torch.bincount(src, minlength=n_groups).to(t.dtype)
    view = [1] * t.dim()
    view[dim] = n_groups
    return first + (sums / counts.view(view)).index_select(dim, src)


def _block_mean_tensor(t: torch.Tensor, layout: TensorLayout) -> torch.Tensor:
    for dim in layout.widened_dims:
        t = _group_mean(t, dim, layout.src[dim])
    return t


def _tensors(model: nn.Module, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if tensors is None:
        return {name: p.detach() for name, p in model.named_parameters()}
    return tensors


def block_mean(
    model: nn.Module, tensors: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The orthogonal projection onto the block-constant tensors, per parameter.

    `tensors` (default: the model's parameters) is a dict of parameter-shaped tensors keyed like
    `model.named_parameters()`; each entry is replaced by the mean of its block.
    """
    layouts = root_layouts(model.cfg)
    return {
        name: _block_mean_tensor(t, layouts[name]) for name, t in _tensors(model, tensors).items()
    }


def normal_component(
    model: nn.Module, tensors: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The normal-space projector: x - block_mean(x) for each parameter-shaped tensor."""
    given = _tensors(model, tensors)
    means = block_mean(model, given)
    return {name: t - means[name] for name, t in given.items()}


def manifold_distance(model: nn.Module) -> float:
    """Distance of the parameters to the block-constant set: ||theta - blockmean(theta)||_2."""
    normal = normal_component(model)
    return math.sqrt(sum(float(n.double().pow(2).sum()) for n in normal.values()))


def equitable_perturbation(model: nn.Module, scale: float, generator: torch.Generator) -> nn.Module:
    """A copy of `model` moved off the block-constant set but kept on an equitable manifold.

    For every weight whose output and input axes are both widened (hidden -> hidden blocks of
    E_out x E_in clones, per kernel position for convolutions), adds T = scale * (R - row means -
    column means + block mean) with R ~ N(0, 1) entrywise: every block of T has zero row and column
    sums, so forward values and back-propagated errors stay exactly cloned (Theorem 2.1 with
    row/column-sum equitability) while the parameters leave the block-constant set. Input and
    output weights have 1 x E blocks and admit no such direction. Exact in exact arithmetic; the
    paper_spec §4.6 finds rounding errors then grow exponentially in float32, so study it in
    float64.
    """
    layouts = root_layouts(model.cfg)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            layout = layouts[name]
            if p.dim() < 2 or layout.src[0] is None or layout.src[1] is None:
                continue
            r = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device)
            r = r.to(p.device)
            rows = _group_mean(r, 1, layout.src[1])  # mean over the block's inputs, per row
            cols = _group_mean(r, 0, layout.src[0])  # mean over the block's outputs, per column
            both = _group_mean(rows, 0, layout.src[0])
            p.add_(scale * (r - rows - cols + both))
    return out


def lr_multipliers(model: nn.Module) -> dict[str, float]:
    """Per-tensor learning-rate multipliers under which SGD on the clone tracks SGD on its root.

    A clone entry is w / s (s the input expansion of a weight, 1 otherwise), copied over the E^k
    entries of its block (k widened axes). On the manifold each entry's gradient is s / E^k times
    the base gradient, so a clone step moves the base coordinate w = s * w' by s^2 / E^k times the
    base step unless the step is multiplied by m = E^k / s^2. For SGD: hidden -> hidden weights
    m = 1, first-layer weights and every per-unit vector (biases, norm affine parameters, ViT
    tokens) m = E, the output weights m = 1/E (paper_spec §4.5). Momentum SGD tracks too (it is
    linear); Adam does not.
    """
    factor = model.cfg.clone_factor
    layouts = root_layouts(model.cfg)
    multipliers = {}
    for name, _ in model.named_parameters():
        layout = layouts[name]
        k = len(layout.widened_dims)
        multipliers[name] = factor**k / layout.scale**2
    return multipliers


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """torch.optim parameter groups with `lr * lr_multipliers(model)[name]` per tensor."""
    multipliers = lr_multipliers(model)
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault(multipliers[name], []).append(p)
    return [{"params": ps, "lr": lr * m} for m, ps in groups.items()]
