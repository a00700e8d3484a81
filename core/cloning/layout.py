"""Where every entry of a widened model comes from: the clone layout of each tensor.

A width expansion by a factor E maps each base unit k of a hidden interface to E clone units. The
layout of a tensor says, for each of its dimensions, which base index each clone index copies
(`src`, or None for a dimension that is not widened), and by how much the copied values are divided
(`scale`: the input expansion of a Linear/Conv weight, so that the E copies of an input sum back to
one base input).

Interfaces are *interleaved*: base unit k becomes clone units k*E .. k*E + E - 1. Composition is
closed: expanding by E1 then E2 gives the same layout as expanding once by E1*E2, so the block of a
clone unit u is always u // clone_factor. The one exception to plain interleaving is inside
attention: the qkv output and the proj input are laid out as heads x head_dim, and clone head
h*E + j is a copy of base head h (duplicated heads, head width unchanged), which keeps the softmax
temperature and hence attention exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.models import ModelConfig, build_model
from core.models.vit import Attention


@dataclass(frozen=True)
class TensorLayout:
    """How a clone tensor is built from its base: `clone = base[src_0, src_1, ...] / scale`."""

    src: tuple[torch.Tensor | None, ...]  # per dim: clone index -> base index, or None (same size)
    scale: float  # the input expansion of a Linear/Conv weight; 1 otherwise

    @property
    def widened_dims(self) -> tuple[int, ...]:
        return tuple(d for d, s in enumerate(self.src) if s is not None)

    def apply(self, base: torch.Tensor) -> torch.Tensor:
        """The clone tensor of `base` (a new tensor; `base` is not modified)."""
        out = base
        for dim, src in enumerate(self.src):
            if src is not None:
                out = out.index_select(dim, src.to(out.device))
        out = out.clone() if out is base else out
        return out / self.scale if self.scale != 1 else out


def _interleaved(n_base: int, factor: int) -> torch.Tensor:
    """Clone index u -> base index u // factor."""
    return torch.arange(n_base).repeat_interleave(factor)


def _head_duplicated(n_heads: int, head_dim: int, factor: int) -> torch.Tensor:
    """For a (heads x head_dim) axis: clone (h*factor + j)*head_dim + t -> base h*head_dim + t."""
    heads = torch.arange(n_heads).repeat_interleave(factor)  # clone head -> base head
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


def tensor_layouts(base_cfg: ModelConfig, clone_cfg: ModelConfig) -> dict[str, TensorLayout]:
    """The layout of every entry of the clone's state_dict, for `clone_cfg = base_cfg.widened(E)`.

    Shapes are read from both models built on the meta device (no memory, no init cost).
    """
    factor, rem = divmod(clone_cfg.clone_factor, base_cfg.clone_factor)
    if rem or clone_cfg != base_cfg.widened(factor):
        raise ValueError("clone_cfg is not a widening of base_cfg")
    with torch.device("meta"):
        base, clone = build_model(base_cfg), build_model(clone_cfg)
    base_state = base.state_dict(keep_vars=True)

    overrides: dict[tuple[str, int], torch.Tensor] = {}
    input_scaled: set[str] = set()
    for name, module in clone.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            input_scaled.add(f"{prefix}weight")
        if isinstance(module, Attention):
            base_heads = module.n_heads // factor
            qkv = _head_duplicated(3 * base_heads, module.head_dim, factor)  # q, k, v parts alike
            heads = _head_duplicated(base_heads, module.head_dim, factor)
            overrides[(f"{prefix}qkv.weight", 0)] = qkv
            overrides[(f"{prefix}qkv.bias", 0)] = qkv
            overrides[(f"{prefix}proj.weight", 1)] = heads

    layouts = {}
    for name, tensor in clone.state_dict(keep_vars=True).items():
        base_shape = base_state[name].shape
        src: list[torch.Tensor | None] = []
        for dim, (n_clone, n_base) in enumerate(zip(tensor.shape, base_shape)):
            if n_clone == n_base:
                src.append(None)
                continue
            assert n_clone == factor * n_base, (name, tensor.shape, base_shape)
            src.append(overrides.get((name, dim), _interleaved(n_base, factor)))
        scale = 1.0
        if name in input_scaled and src[1] is not None:
            scale = float(factor)
        layouts[name] = TensorLayout(tuple(src), scale)
    return layouts


def root_layouts(cfg: ModelConfig) -> dict[str, TensorLayout]:
    """Layouts of a model relative to its un-expanded root (`cfg.root()`): its clone blocks."""
    if cfg.clone_factor == 1:
        raise ValueError("this model is not a clone (clone_factor == 1): it has no clone blocks")
    return tensor_layouts(cfg.root(), cfg)
