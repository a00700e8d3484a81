"""Batched on-device augmentation: each transform checked against its definition."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.data import Augmentation, prepare_batch

MEAN = torch.tensor([0.5, 0.4, 0.3])
STD = torch.tensor([0.2, 0.25, 0.3])


def _images(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _unnormalise(x):
    return x * STD.view(1, -1, 1, 1) + MEAN.view(1, -1, 1, 1)


def test_without_augmentation_it_is_the_normalisation():
    x = _images()
    out = prepare_batch(x, MEAN, STD)
    expected = (x.float() / 255 - MEAN.view(1, -1, 1, 1)) / STD.view(1, -1, 1, 1)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_each_crop_is_a_window_of_the_zero_padded_image():
    x = _images()
    out = _unnormalise(
        prepare_batch(x, MEAN, STD, Augmentation(crop_padding=2), torch.Generator().manual_seed(1))
    )
    padded = F.pad(x.float() / 255, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert min((w - out[i]).abs().max().item() for w in windows) < 1e-6


def test_flip_gives_the_image_or_its_mirror_and_both_occur():
    x = _images(n=32)
    out = _unnormalise(
        prepare_batch(x, MEAN, STD, Augmentation(flip=True), torch.Generator().manual_seed(2))
    )
    plain = x.float() / 255
    same = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-6
    mirrored = (out - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert torch.all(same | mirrored) and same.any() and mirrored.any()


def test_jitter_keeps_the_range_and_zero_jitter_is_the_identity():
    x = _images()
    g = torch.Generator().manual_seed(3)
    out = _unnormalise(prepare_batch(x, MEAN, STD, Augmentation(jitter=0.5), g))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert not torch.allclose(out, x.float() / 255, atol=1e-3)
    rotated = prepare_batch(x, MEAN, STD, Augmentation(rotation=1e-9), g)
    assert torch.allclose(_unnormalise(rotated), x.float() / 255, atol=1e-6)


def test_same_generator_state_same_augmentation():
    x = _images()
    aug = Augmentation(crop_padding=1, flip=True, jitter=0.1, rotation=10.0)
    a = prepare_batch(x, MEAN, STD, aug, torch.Generator().manual_seed(7))
    b = prepare_batch(x, MEAN, STD, aug, torch.Generator().manual_seed(7))
    c = prepare_batch(x, MEAN, STD, aug, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
