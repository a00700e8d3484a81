"""A generated image classification dataset for smoke runs and tests: any shape and class count,
learnable, and the same images for the same seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SyntheticSpec:
    """The shape, size and seed of the `synthetic` dataset."""

    channels: int = 3  # image channels
    size: int = 8  # image height and width, pixels
    classes: int = 10  # number of classes
    train_per_class: int = 40  # training images per class
    test_per_class: int = 10  # test images per class
    noise: float = 40.0  # std of the per-pixel noise around a class prototype (uint8 units)
    seed: int = 0  # seed of the generator that draws prototypes and noise


def make_synthetic(
    spec: SyntheticSpec,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y): uint8 (N, C, H, W) images and int64 labels.

    Each class has a smooth prototype: a (C, 4, 4) uniform random pattern in [48, 208] upsampled
    bilinearly to (C, size, size). An image is its class prototype plus N(0, noise^2) pixel noise,
    rounded and clipped to uint8. Images of a split are in a seeded random order. Every draw is
    float32 whatever torch's default dtype, so the same spec gives the same images everywhere.
    """
    if spec.classes < 1 or spec.size < 1 or spec.channels < 1:
        raise ValueError(f"synthetic needs positive channels, size and classes, got {spec}")
    g = torch.Generator().manual_seed(spec.seed)
    shape = (spec.classes, spec.channels, 4, 4)
    coarse = 48 + 160 * torch.rand(shape, generator=g, dtype=torch.float32)
    prototypes = F.interpolate(coarse, size=(spec.size, spec.size), mode="bilinear")  # (K,C,H,W)

    def split(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(spec.classes).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=g)]
        shape = (len(labels), *prototypes.shape[1:])
        noise = spec.noise * torch.randn(shape, generator=g, dtype=torch.float32)
        images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
        return images, labels

    train_x, train_y = split(spec.train_per_class)
    test_x, test_y = split(spec.test_per_class)
    return train_x, train_y, test_x, test_y
