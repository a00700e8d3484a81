"""Geometry of the cloning manifold of a cloned model (paper §A.3, §A.5; docs/cloning.md).

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

    For every weight W whose output and input axes are both widened (hidden -> hidden blocks of
    E_out x E_in clones, per kernel position for convolutions), adds T = scale * ||W|| * D / ||D||
    with D = R - row means - column means + block mean of R ~ N(0, 1) entrywise (Frobenius norms
    of the whole tensor): every block of T has zero row and column sums, so forward values and
    back-propagated errors stay exactly cloned (Theorem 2.1 with row/column-sum equitability)
    while the parameters leave the block-constant set, each tensor by `scale` times its own norm
    (a weight that is zero stays zero). Input and output weights have 1 x E blocks and admit no
    such direction. Exact in exact arithmetic; in float32 the rounding errors of such a clone
    grow exponentially under training (docs/cloning.md), so study it in float64.
    """
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0 (relative to each tensor's norm), got {scale}")
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
            direction = r - rows - cols + both
            p.add_(direction * (scale * p.norm() / direction.norm()))
    return out


def _factors(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Per parameter (s, c): s the input expansion of the clone entry w' = w / s (1 for
    non-weights and input weights), c = s / E^k the factor by which a gradient entry on the
    manifold is the base gradient (k the tensor's widened axes)."""
    factor = model.cfg.clone_factor
    layouts = root_layouts(model.cfg)
    out = {}
    for name, _ in model.named_parameters():
        layout = layouts[name]
        out[name] = (layout.scale, layout.scale / factor ** len(layout.widened_dims))
    return out


def lr_multipliers(model: nn.Module) -> dict[str, float]:
    """Per-tensor learning-rate multipliers under which SGD on the clone tracks SGD on its root.

    A clone entry is w / s (s the input expansion of a weight, 1 otherwise), copied over the E^k
    entries of its block (k widened axes). On the manifold each entry's gradient is c = s / E^k
    times the base gradient, so a clone step moves the base coordinate w = s * w' by s c times
    the base step unless the step is multiplied by m = 1 / (s c) = E^k / s^2: hidden -> hidden
    weights m = 1, first-layer weights and every per-unit vector (biases, norm affine
    parameters, ViT tokens) m = E, the output weights m = 1/E. Momentum SGD tracks too (it is
    linear). With weight decay (coupled L2, lambda w added to the gradient) tracking also needs
    lambda / m per tensor; `param_groups` sets both. Adam needs its own rule (`param_groups`,
    rule="adam").
    """
    return {name: 1.0 / (s * c) for name, (s, c) in _factors(model).items()}


RULES = ("sgd", "adam")


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    rule: str = "sgd",
    weight_decay: float | None = None,
    eps: float = 1e-8,
) -> list[dict]:
    """torch.optim parameter groups under which the optimizer on the clone tracks its root.

    Per tensor, with s the input expansion and c = s / E^k the gradient factor (see
    `lr_multipliers`): `rule="sgd"` (SGD, momentum, noise-free) lr * m with m = 1 / (s c);
    `rule="adam"` (Adam, torch semantics) lr / s and eps * c: Adam's moments see c g, so
    m / (sqrt(v) + eps) is unchanged when eps scales by c, and the step lr' * that moves
    w = s w' by s lr', hence lr' = lr / s. With `weight_decay` lambda both set lambda / m (coupled
    L2: the clone's decay term lambda' w' must be c times the base's lambda w, and w' = w / s);
    without it the groups leave weight decay to the optimizer (which then does not track).
    `eps` is the base optimizer's Adam eps. Pass the groups to an optimizer built with the same
    betas/momentum as the base's.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    groups: dict[tuple[float, ...], list] = {}
    factors = _factors(model)
    for name, p in model.named_parameters():
        s, c = factors[name]
        m = 1.0 / (s * c)
        options = {"lr": lr * m} if rule == "sgd" else {"lr": lr / s, "eps": eps * c}
        if weight_decay is not None:
            options["weight_decay"] = weight_decay / m
        groups.setdefault(tuple(options.items()), []).append(p)
    return [{"params": ps, **dict(key)} for key, ps in groups.items()]
