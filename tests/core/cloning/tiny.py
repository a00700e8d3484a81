"""Tiny models of every architecture, so that cloning tests run in seconds."""

from __future__ import annotations

import torch

from core.models import ModelConfig, build_model

IMAGE = (3, 8, 8)
ARCHS_NORMS = [
    (arch, norm) for arch in ("mlp", "cnn", "resnet", "vit") for norm in ("batch", "layer", "none")
] + [("bitflip", "none")]


def tiny_config(arch: str, norm: str = "none", dropout: float = 0.0, **kw) -> ModelConfig:
    sizes = {
        "mlp": {"hidden_sizes": (6, 5)},
        "cnn": {"conv_channels": (4, 6), "fc_hidden": (5,)},
        "resnet": {"base_channels": 3, "stage_blocks": (1, 1)},
        "vit": {"embed_dim": 8, "n_heads": 2, "depth": 2, "patch_size": 4, "attn_dropout": 0.0},
        "bitflip": {"hidden_sizes": (5,)},
    }[arch]
    sizes.update(kw)
    if arch == "bitflip":
        return ModelConfig(arch="bitflip", in_shape=(21,), num_classes=1, **sizes)
    return ModelConfig(
        arch=arch, in_shape=IMAGE, num_classes=4, norm=norm, dropout=dropout, **sizes
    )


def batch(cfg: ModelConfig, n: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *cfg.in_shape, generator=g, dtype=dtype)
    if cfg.arch == "bitflip":
        return x, torch.randn(n, 1, generator=g, dtype=dtype)
    return x, torch.randint(0, cfg.num_classes, (n,), generator=g)


def loss_of(cfg: ModelConfig, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.arch == "bitflip":
        return torch.nn.functional.mse_loss(out, y)
    return torch.nn.functional.cross_entropy(out, y)


def train(model, cfg: ModelConfig, opt, steps: int, seed: int = 0, grad_noise: float = 0.0):
    """`steps` steps of `opt` on batches of 16 seeded `seed + step`, in the model's dtype; with
    `grad_noise`, that times a standard normal (a stream of its own) is added to every gradient."""
    g = torch.Generator().manual_seed(seed + 999)
    dtype = next(model.parameters()).dtype
    for step in range(steps):
        x, y = batch(cfg, 16, seed=seed + step, dtype=dtype)
        opt.zero_grad()
        loss_of(cfg, model(x), y).backward()
        if grad_noise:
            for p in model.parameters():
                p.grad.add_(grad_noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
        opt.step()


def trained_base(cfg: ModelConfig, dtype=torch.float64, steps: int = 5) -> torch.nn.Module:
    """A base model trained a few Adam steps in train mode, so that every affine parameter and
    running statistic has left its initial value."""
    model = build_model(cfg, seed=0).to(dtype).train()
    train(model, cfg, torch.optim.Adam(model.parameters(), lr=0.01), steps, seed=100)
    return model
