"""The models' structure pinned module by module: the order the modules run in and the attributes
that define them (norm placement, kernel sizes, strides, GELU variant, norm affine parameters),
written out by hand from the paper's architecture description (paper §B.1.3)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from core.models import ModelConfig, build_model


def _call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the leaf modules in the order their forward runs."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return order


def _describe(m: nn.Module) -> tuple:
    """The defining attributes of a leaf module."""
    if isinstance(m, nn.Conv2d):
        return (
            "Conv2d",
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.bias is not None,
        )
    if isinstance(m, nn.Linear):
        return ("Linear", m.in_features, m.out_features, m.bias is not None)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return (type(m).__name__, m.num_features, m.affine, m.track_running_stats, m.eps)
    if isinstance(m, nn.LayerNorm):
        return ("LayerNorm", m.normalized_shape, m.elementwise_affine, m.eps)
    if isinstance(m, nn.GroupNorm):
        return ("GroupNorm", m.num_groups, m.num_channels, m.affine)
    if isinstance(m, nn.GELU):
        return ("GELU", m.approximate)
    if isinstance(m, nn.MaxPool2d):
        return ("MaxPool2d", m.kernel_size, m.stride)
    if isinstance(m, nn.Dropout):
        return ("Dropout", m.p)
    if isinstance(m, nn.LeakyReLU):
        return ("LeakyReLU", m.negative_slope)
    return (type(m).__name__,)


def _cfg(arch: str, **fields) -> ModelConfig:
    """A small `arch` model of 3 x 8 x 8 images and 3 classes, unless `fields` say otherwise."""
    return ModelConfig(arch=arch, **{"in_shape": (3, 8, 8), "num_classes": 3, **fields})


VIT = {"embed_dim": 8, "n_heads": 2, "depth": 1, "patch_size": 4}


def _structure(cfg: ModelConfig) -> list[tuple]:
    model = build_model(cfg, seed=0)
    modules = dict(model.named_modules())
    x = torch.randn(2, *cfg.in_shape)
    return [(name, *_describe(modules[name])) for name in _call_order(model, x)]


def test_mlp_structure():
    cfg = _cfg("mlp", in_shape=(1, 2, 2), hidden_sizes=(5, 4), dropout=0.2, norm="batch")
    assert _structure(cfg) == [
        ("flatten", "Flatten"),
        ("blocks.0.linear", "Linear", 4, 5, True),
        ("blocks.0.norm", "BatchNorm1d", 5, True, True, 1e-5),  # before the activation
        ("blocks.0.act", "ReLU"),
        ("blocks.0.drop", "Dropout", 0.2),
        ("blocks.1.linear", "Linear", 5, 4, True),
        ("blocks.1.norm", "BatchNorm1d", 4, True, True, 1e-5),
        ("blocks.1.act", "ReLU"),
        ("blocks.1.drop", "Dropout", 0.2),
        ("head", "Linear", 4, 3, True),
    ]
    after = _cfg("mlp", in_shape=(4,), num_classes=2, hidden_sizes=(3,), norm="layer")
    after = dataclasses.replace(after, norm_after_activation=True, activation="leaky_relu")
    assert [s[0] for s in _structure(after)][1:4] == [
        "blocks.0.linear",
        "blocks.0.act",
        "blocks.0.norm",
    ]
    assert ("blocks.0.act", "LeakyReLU", 0.1) in _structure(after)
    assert ("blocks.0.norm", "LayerNorm", (3,), True, 1e-5) in _structure(after)


def test_cnn_structure():
    cfg = _cfg("cnn", conv_channels=(4, 6), fc_hidden=(5,), dropout=0.1, norm="batch")
    assert _structure(cfg) == [
        ("stages.0.conv", "Conv2d", 3, 4, (3, 3), (1, 1), (1, 1), True),
        ("stages.0.norm", "BatchNorm2d", 4, True, True, 1e-5),
        ("stages.0.act", "ReLU"),
        ("stages.0.pool", "MaxPool2d", 2, 2),
        ("stages.1.conv", "Conv2d", 4, 6, (3, 3), (1, 1), (1, 1), True),
        ("stages.1.norm", "BatchNorm2d", 6, True, True, 1e-5),
        ("stages.1.act", "ReLU"),
        ("stages.1.pool", "MaxPool2d", 2, 2),
        ("flatten", "CloneAwareFlatten"),
        ("fc.0.linear", "Linear", 6 * 2 * 2, 5, True),
        ("fc.0.act", "ReLU"),
        ("fc.0.drop", "Dropout", 0.1),  # dropout only in the fully connected part
        ("head", "Linear", 5, 3, True),
    ]
    layer = _cfg("cnn", conv_channels=(4,), fc_hidden=(5,), norm="layer")
    assert ("stages.0.norm", "GroupNorm", 1, 4, True) in _structure(layer)  # LN over C, H, W


def test_resnet_structure():
    cfg = _cfg("resnet", base_channels=4, stage_blocks=(1, 1), dropout=0.1, norm="batch")
    bn = ("BatchNorm2d",)
    assert _structure(cfg) == [
        ("stem.0", "Conv2d", 3, 4, (3, 3), (1, 1), (1, 1), False),  # 3x3, stride 1, no max-pool
        ("stem.1", *bn, 4, True, True, 1e-5),
        ("stem.2", "ReLU"),
        ("blocks.0.conv1", "Conv2d", 4, 4, (3, 3), (1, 1), (1, 1), False),
        ("blocks.0.norm1", *bn, 4, True, True, 1e-5),
        ("blocks.0.act1", "ReLU"),
        ("blocks.0.conv2", "Conv2d", 4, 4, (3, 3), (1, 1), (1, 1), False),
        ("blocks.0.norm2", *bn, 4, True, True, 1e-5),
        ("blocks.0.shortcut", "Identity"),
        ("blocks.0.act2", "ReLU"),  # after the residual sum
        ("blocks.1.conv1", "Conv2d", 4, 8, (3, 3), (2, 2), (1, 1), False),
        ("blocks.1.norm1", *bn, 8, True, True, 1e-5),
        ("blocks.1.act1", "ReLU"),
        ("blocks.1.conv2", "Conv2d", 8, 8, (3, 3), (1, 1), (1, 1), False),
        ("blocks.1.norm2", *bn, 8, True, True, 1e-5),
        ("blocks.1.shortcut.0", "Conv2d", 4, 8, (1, 1), (2, 2), (0, 0), False),  # 1x1 projection
        ("blocks.1.shortcut.1", *bn, 8, True, True, 1e-5),
        ("blocks.1.act2", "ReLU"),
        ("pool", "AdaptiveAvgPool2d"),
        ("drop", "Dropout", 0.1),
        ("head", "Linear", 8, 3, True),
    ]
    none = _cfg("resnet", base_channels=4, stage_blocks=(1,), norm="none")
    assert ("stem.0", "Conv2d", 3, 4, (3, 3), (1, 1), (1, 1), True) in _structure(none)


def test_vit_structure():
    cfg = _cfg("vit", **VIT, mlp_ratio=4, dropout=0.1)
    ln = ("LayerNorm", (8,), True, 1e-5)
    assert _structure(cfg) == [
        ("patch_embed", "Conv2d", 3, 8, (4, 4), (4, 4), (0, 0), True),
        ("pos_drop", "Dropout", 0.1),
        ("blocks.0.norm1", *ln),  # pre-norm
        ("blocks.0.attn.qkv", "Linear", 8, 24, True),
        ("blocks.0.attn.proj", "Linear", 8, 8, True),
        ("blocks.0.attn.drop", "Dropout", 0.1),
        ("blocks.0.norm2", *ln),
        ("blocks.0.mlp.fc1", "Linear", 8, 32, True),
        ("blocks.0.mlp.act", "GELU", "none"),  # the exact (erf) GELU
        ("blocks.0.mlp.drop1", "Dropout", 0.1),
        ("blocks.0.mlp.fc2", "Linear", 32, 8, True),
        ("blocks.0.mlp.drop2", "Dropout", 0.1),
        ("norm", *ln),
        ("head", "Linear", 8, 3, True),
    ]
    model = build_model(cfg, seed=0)
    assert model.cls_token.shape == (1, 1, 8) and model.pos_embed.shape == (1, 5, 8)
    assert model.blocks[0].attn.head_dim == 4 and model.blocks[0].attn.attn_dropout == 0.1


def test_vit_residual_and_head_read_the_cls_token():
    """x + Attn(Norm1 x), then + MLP(Norm2 x), then the head on the final norm's CLS token."""
    cfg = _cfg("vit", **VIT, dropout=0.0)
    model = build_model(cfg, seed=0).eval()
    block = model.blocks[0]
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        h = x + block.attn(block.norm1(x))
        expected = h + block.mlp(block.norm2(h))
        assert torch.allclose(block(x), expected, atol=0, rtol=0)
        img = torch.randn(2, 3, 8, 8)
        tokens = model.patch_embed(img).flatten(2).transpose(1, 2)
        seq = torch.cat([model.cls_token.expand(2, -1, -1), tokens], 1) + model.pos_embed
        out = model.head(model.norm(model.blocks[0](seq))[:, 0])
        assert torch.allclose(model(img), out, atol=1e-6, rtol=0)
