"""Normalisation and augmentation of uint8 image batches, batched on the batch's device.

Every random draw comes from the `torch.Generator` passed in (on the batch's device), so a run that
restores that generator's state repeats its augmentations exactly. Per image, in this order:

1. random rotation by U(-rotation, +rotation) degrees, nearest-neighbour, zero fill (MNIST);
2. random crop: zero-pad by `crop_padding` on every side, take a window of the original size at a
   uniformly random offset (torchvision `RandomCrop(size, padding)`);
3. horizontal flip with probability 1/2;
4. colour jitter (Tiny ImageNet): brightness, then contrast, then saturation, each by a factor
   U(1 - jitter, 1 + jitter) per image, clamped to [0, 1] after each (torchvision `ColorJitter`
   applies the three in a random order; here the order is fixed);
5. normalisation `(x / 255 - mean) / std` per channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation of a dataset (all off: none)."""

    crop_padding: int = 0  # zero padding of the random crop, pixels per side (0: no crop)
    flip: bool = False  # random horizontal flip with probability 1/2
    jitter: float = 0.0  # brightness/contrast/saturation factor range 1 +- jitter (0: none)
    rotation: float = 0.0  # maximal rotation in degrees (0: none)

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.jitter or self.rotation)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device)
    return low + (high - low) * u


def _rotate(x: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    angle = _uniform(b, -degrees, degrees, generator) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(b, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    dev = x.device
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    rows = top[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = left[:, None] + torch.arange(w, device=dev)  # (B, W)
    flat = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]  # (B, H, W) into the padded
    index = flat.view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)  # (B, C, H, W)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)


def _jitter(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    brightness, contrast, saturation = (
        _uniform(b, 1 - amount, 1 + amount, generator).view(b, 1, 1, 1) for _ in range(3)
    )
    x = (x * brightness).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + contrast * (x - mean)).clamp(0, 1)
    gray = _gray(x)
    return (gray + saturation * (x - gray)).clamp(0, 1)


def prepare_batch(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    augmentation: Augmentation | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A float32 network input from a uint8 (B, C, H, W) batch, augmented when asked.

    `mean` and `std` are (C,) tensors on the batch's device; `generator` (on the same device) is
    required when `augmentation` is active.
    """
    out = x.float() / 255.0
    if augmentation is not None and augmentation.active:
        if generator is None:
            raise ValueError("augmentation needs a torch.Generator on the batch's device")
        if augmentation.rotation:
            out = _rotate(out, augmentation.rotation, generator)
        if augmentation.crop_padding:
            out = _crop(out, augmentation.crop_padding, generator)
        if augmentation.flip:
            flip = torch.rand(out.shape[0], generator=generator, device=out.device) < 0.5
            out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        if augmentation.jitter:
            out = _jitter(out, augmentation.jitter, generator)
    return (out - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
