"""N small models of one architecture (MLP, CNN) trained as one module over stacked parameters.

`PackedModel(models, dropout_generators)` copies N models built from the same `ModelConfig` and
replaces each leaf module by a grouped one holding the N members' tensors stacked along a new
first axis, under the leaf's own names (`blocks.0.linear.weight` is (N, out, in)); the model
class's own `forward` then runs on the packed leaves, so the packed ensemble computes exactly what
the N models compute, member by member:

- Linear: a batched matmul (`torch.baddbmm`) on (N, B, D) activations;
- Conv2d: one grouped convolution (groups = N) on (B, N*C, H, W) maps, member k's channels
  k*C .. (k+1)*C - 1; max pooling and the activations act on that layout unchanged;
- BatchNorm over N*C channels is per-member BatchNorm (each channel's statistics are its own
  member's); GroupNorm(1, C) is GroupNorm(N, N*C); LayerNorm runs once per member;
- Dropout draws member k's mask from member k's generator, exactly as `torch.nn.Dropout` on a
  CPU draws from torch's global generator: `empty_like(x).bernoulli_(1 - p)`, divided by 1 - p;
  a generator in the state the global one has in a single run gives that run's masks.

Input: (N, B, C, H, W) images (member k's batch is x[k]); output: (N, B, K) logits. Member k's
own state dict (the single model's, keys and shapes) is `member_state_dict(k)`; `load_member(k,
model)` copies it into a single model of the same config (to evaluate or probe it with the
single-run code). Gradient-based updates that act element by element (SGD with momentum and
weight decay, Adam) update every member as its own optimizer would; per-tensor statistics (a
gradient norm, per-layer interventions) would mix the members and are not supported.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.models.blocks import CloneAwareFlatten

PACKABLE_ARCHS = ("mlp", "cnn")
# leaves that act elementwise or per channel, the same on the packed layouts
_SHARED_LEAVES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
    nn.SELU,
    nn.SiLU,
    nn.Identity,
    nn.MaxPool2d,
)


def _stack(tensors: Sequence[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]))


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward makes the gradient contiguous: a sum over the batch of a
    transposed gradient (a Linear's bias gradient) adds in another order than the single
    model's sum over its contiguous gradient."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _vectors_to_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, B, D) -> (B, N*D): member k's features are the columns k*D .. (k+1)*D - 1; the
    gradient flows back as a contiguous (N, B, D)."""
    n, b, d = x.shape
    return _ContiguousGrad.apply(x).transpose(0, 1).reshape(b, n * d)


def _rows_to_vectors(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N*D) -> contiguous (N, B, D)."""
    return x.view(x.shape[0], n, -1).transpose(0, 1).contiguous()


class PackedLinear(nn.Module):
    """N Linear layers: (N, B, in) -> (N, B, out); weight (N, out, in), bias (N, out)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = _stack([m.weight for m in layers])
        self.bias = None if layers[0].bias is None else _stack([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class PackedConv2d(nn.Module):
    """N Conv2d layers as one grouped convolution on (B, N*C_in, H, W) maps."""

    def __init__(self, layers: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        conv = layers[0]
        if conv.padding_mode != "zeros":
            raise ValueError(f"pack: Conv2d padding_mode={conv.padding_mode!r}; valid: zeros")
        self.members = len(layers)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups
        self.weight = _stack([m.weight for m in layers])  # (N, C_out, C_in / groups, kh, kw)
        self.bias = None if conv.bias is None else _stack([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(
            x,
            self.weight.flatten(0, 1),
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.members * self.groups,
        )


class PackedBatchNorm(nn.Module):
    """N BatchNorm1d (on (N, B, D) vectors) or BatchNorm2d (on (B, N*C, H, W) maps) layers as
    one BatchNorm over N*C channels: each channel's batch statistics and running statistics are
    its own member's. Follows `torch.nn.BatchNorm`'s forward (momentum, num_batches_tracked)."""

    def __init__(self, layers: Sequence[nn.BatchNorm1d | nn.BatchNorm2d]) -> None:
        super().__init__()
        bn = layers[0]
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("pack: BatchNorm needs affine=True and track_running_stats=True")
        self.members = len(layers)
        self.vectors = isinstance(bn, nn.BatchNorm1d)
        self.eps, self.momentum = bn.eps, bn.momentum
        self.weight = _stack([m.weight for m in layers])  # (N, C)
        self.bias = _stack([m.bias for m in layers])
        self.register_buffer("running_mean", torch.stack([m.running_mean for m in layers]))
        self.register_buffer("running_var", torch.stack([m.running_var for m in layers]))
        # one count for all: the members step together (member k's is this one)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        rows = _vectors_to_rows(x) if self.vectors else x
        out = F.batch_norm(
            rows,
            self.running_mean.view(-1),  # views: the update lands in the (N, C) buffers
            self.running_var.view(-1),
            self.weight.flatten(),
            self.bias.flatten(),
            self.training,
            factor,
            self.eps,
        )
        return _rows_to_vectors(out, self.members) if self.vectors else out


class PackedLayerNorm(nn.Module):
    """N LayerNorm layers over the last axis of (N, B, D) vectors."""

    def __init__(self, layers: Sequence[nn.LayerNorm]) -> None:
        super().__init__()
        norm = layers[0]
        if not norm.elementwise_affine or norm.bias is None:
            raise ValueError("pack: LayerNorm needs elementwise_affine=True with a bias")
        self.shape, self.eps = norm.normalized_shape, norm.eps
        self.weight = _stack([m.weight for m in layers])  # (N, D)
        self.bias = _stack([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one fused call per member: the same rounding as its single LayerNorm
        return torch.stack(
            [
                F.layer_norm(x[k], self.shape, self.weight[k], self.bias[k], self.eps)
                for k in range(len(x))
            ]
        )


class PackedGroupNorm(nn.Module):
    """N GroupNorm(G, C) layers as GroupNorm(N*G, N*C) on (B, N*C, H, W) maps."""

    def __init__(self, layers: Sequence[nn.GroupNorm]) -> None:
        super().__init__()
        norm = layers[0]
        if not norm.affine:
            raise ValueError("pack: GroupNorm needs affine=True")
        self.groups, self.eps = len(layers) * norm.num_groups, norm.eps
        self.weight = _stack([m.weight for m in layers])  # (N, C)
        self.bias = _stack([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight.flatten(), self.bias.flatten(), self.eps)


class PackedDropout(nn.Module):
    """N Dropout layers on (N, B, D) vectors; member k's mask comes from `generators[k]`."""

    def __init__(self, p: float, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.p = p
        self.generators = list(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep, shape = 1 - self.p, x.shape[1:]
        noise = torch.stack(
            [
                torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep, generator=g)
                for g in self.generators
            ]
        )
        return x * noise.div_(keep)


class PackedFlatten(nn.Module):
    """(B, N*C, H, W) maps (or packed input images) -> (N, B, C*H*W) vectors: each member's
    plain flatten."""

    def __init__(self, members: int) -> None:
        super().__init__()
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rows_to_vectors(x.reshape(x.shape[0], -1), self.members)


def _pack_leaf(peers: list[nn.Module], generators: Sequence[torch.Generator]) -> nn.Module:
    leaf, n = peers[0], len(peers)
    if isinstance(leaf, nn.Linear):
        return PackedLinear(peers)
    if isinstance(leaf, nn.Conv2d):
        return PackedConv2d(peers)
    if isinstance(leaf, nn.BatchNorm1d | nn.BatchNorm2d):
        return PackedBatchNorm(peers)
    if isinstance(leaf, nn.LayerNorm):
        return PackedLayerNorm(peers)
    if isinstance(leaf, nn.GroupNorm):
        return PackedGroupNorm(peers)
    if isinstance(leaf, nn.Dropout):
        return PackedDropout(leaf.p, generators)
    if isinstance(leaf, nn.Flatten) or (isinstance(leaf, CloneAwareFlatten) and leaf.factor == 1):
        return PackedFlatten(n)
    if isinstance(leaf, _SHARED_LEAVES) and not getattr(leaf, "inplace", False):
        return copy.deepcopy(leaf)
    raise ValueError(f"pack: a {type(leaf).__name__} layer cannot be packed")


class PackedModel(nn.Module):
    """N models of one `ModelConfig` (arch in PACKABLE_ARCHS) as one module (module docstring).

    `dropout_generators[k]` draws member k's dropout masks (needed when the models have dropout);
    `body` holds the packed leaves under the single model's module names (`head` is the members'
    heads).
    """

    def __init__(
        self, models: Sequence[nn.Module], dropout_generators: Sequence[torch.Generator] = ()
    ) -> None:
        super().__init__()
        first = models[0]
        cfg = first.cfg
        if cfg.arch not in PACKABLE_ARCHS:
            raise ValueError(f"pack: arch {cfg.arch!r}; valid: {', '.join(PACKABLE_ARCHS)}")
        if any(m.cfg != cfg for m in models):
            raise ValueError("pack: every member must have the same ModelConfig")
        if cfg.dropout > 0 and len(dropout_generators) != len(models):
            raise ValueError("pack: models with dropout need one dropout generator per member")
        self.members = len(models)
        self.cfg = cfg
        self.body = copy.deepcopy(first)
        for name, leaf in first.named_modules():
            if next(leaf.children(), None) is not None or not name:
                continue
            parent, _, attr = name.rpartition(".")
            peers = [m.get_submodule(name) for m in models]
            self.body.get_submodule(parent).add_module(attr, _pack_leaf(peers, dropout_generators))

    @property
    def head(self) -> nn.Module:
        """The members' heads, packed (a single model's `head`)."""
        return self.body.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B, C, H, W) images -> (N, B, K) logits."""
        n, b = x.shape[:2]
        return self.body(x.transpose(0, 1).reshape(b, n * x.shape[2], *x.shape[3:]))

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's state dict, as its single model's `state_dict()` (copies)."""
        return {
            name: (t[k] if t.dim() else t).detach().clone()
            for name, t in self.body.state_dict().items()
        }

    def load_member(self, k: int, model: nn.Module) -> nn.Module:
        """Copy member k into `model`, a single model of the same config; returns it."""
        model.load_state_dict(self.member_state_dict(k))
        return model


def member_optimizer_state(packed: PackedModel, state: dict, k: int) -> dict[str, object]:
    """Member k's share of the `state_dict()` of an optimizer over `packed.parameters()`: the
    state dict its own optimizer over its single model's parameters would have (per-parameter
    tensors shaped like the stacked parameter sliced, scalars such as Adam's step copied)."""
    shapes = {i: p.shape for i, p in enumerate(packed.parameters())}

    def share(i: int, value: object) -> object:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return copy.deepcopy(value)
        if value.shape != shapes[i]:
            raise ValueError(f"optimizer state of shape {tuple(value.shape)} is not per element")
        return value[k].clone()

    return {
        "state": {
            i: {key: share(i, v) for key, v in entry.items()} for i, entry in state["state"].items()
        },
        "param_groups": copy.deepcopy(state["param_groups"]),
    }
