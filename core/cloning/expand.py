"""Width expansion onto the cloning manifold (paper §2, §A.3-A.4, §B.1.2; docs/cloning.md)."""

from __future__ import annotations

import torch
from torch import nn

from core.cloning.layout import tensor_layouts
from core.models import build_model


def expand(model: nn.Module, factor: int) -> nn.Module:
    """A new model, `factor` times wider, that computes exactly the function of `model`.

    Every hidden unit (channel, embedding dim, MLP unit) becomes a block of `factor` clones
    (interleaved: base unit k -> clone units k*factor ... k*factor + factor - 1); Linear/Conv
    weights are tiled and divided by their input expansion, biases, norm affine parameters and
    BatchNorm running statistics are duplicated, the CNN's flatten keeps clones adjacent, and ViT
    attention heads are duplicated (n_heads * factor heads of unchanged width). Input and output are
    untouched, so outputs and input gradients are the same in eval mode and in train mode without
    dropout. The clone is block-constant, hence on the cloning manifold: SGD, momentum and Adam
    keep it there (Theorem 2.1). `model` is not modified; expanding a clone again composes
    (`expand(expand(m, 2), 3)` has the layout of `expand(m, 6)`).
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError("expand needs a model built by core.models.build_model (it has .cfg)")
    clone_cfg = cfg.widened(factor)
    layouts = tensor_layouts(cfg, clone_cfg)
    base_state = model.state_dict()
    state = {name: layout.apply(base_state[name]) for name, layout in layouts.items()}
    with torch.device("meta"):
        clone = build_model(clone_cfg)
    clone.load_state_dict(state, assign=True)
    for p_clone, p_base in zip(clone.parameters(), model.parameters()):
        p_clone.requires_grad_(p_base.requires_grad)
    return clone.train(model.training)
