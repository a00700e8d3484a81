"""Models with the paper's defaults, built from a `ModelConfig`.

Every model has `.cfg` and `.declared_layers()`: the layers (hidden activations, block outputs)
that metrics, cloning checks and CBP work on, so that no other code guesses layers by name.
"""

from __future__ import annotations

import torch
from torch import nn

from core.models.bitflip import BitFlipLearner
from core.models.blocks import CloneAwareFlatten, Layer, activation_gain, make_activation
from core.models.cnn import CNN
from core.models.config import ARCHS, MODEL_ACTIVATIONS, NORMS, ModelConfig
from core.models.mlp import MLP
from core.models.resnet import ResNet
from core.models.vit import ViT

_CLASSES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "vit": ViT,
    "bitflip": BitFlipLearner,
}


def build_model(cfg: ModelConfig, seed: int | None = None) -> nn.Module:
    """A freshly initialised model for `cfg`.

    With `seed`, the initialisation draws from a private RNG stream seeded by it (the global RNG
    is left untouched), so the same (cfg, seed) always gives the same weights.
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model takes a ModelConfig, got {type(cfg).__name__}")
    if seed is None:
        return _CLASSES[cfg.arch](cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _CLASSES[cfg.arch](cfg)


__all__ = [
    "MODEL_ACTIVATIONS",
    "ARCHS",
    "NORMS",
    "CloneAwareFlatten",
    "Layer",
    "ModelConfig",
    "activation_gain",
    "build_model",
    "make_activation",
]
