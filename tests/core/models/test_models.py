"""The five models: paper defaults, every option, any width and input shape, declared layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.models import MODEL_ACTIVATIONS, ModelConfig, build_model
from core.models.capture import capture_layers

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "vit"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_paper_defaults_build_and_run(arch, shape):
    cfg = ModelConfig(arch=arch, in_shape=shape, num_classes=7)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_paper_defaults_are_filled_in():
    mlp = ModelConfig(arch="mlp", in_shape=(3, 32, 32), num_classes=10)
    assert (mlp.hidden_sizes, mlp.norm, mlp.activation, mlp.dropout) == (
        (128,) * 5,
        "batch",
        "relu",
        0.2,
    )
    vit = ModelConfig(arch="vit", in_shape=(3, 64, 64), num_classes=200)
    assert (vit.embed_dim, vit.depth, vit.n_heads, vit.head_dim, vit.patch_size) == (
        384,
        6,
        6,
        64,
        8,
    )
    assert (vit.norm, vit.activation, vit.dropout, vit.attn_dropout) == ("layer", "gelu", 0.1, 0.1)
    # attention dropout follows dropout unless set: p = 0 means no dropout of any kind
    assert (
        ModelConfig(arch="vit", in_shape=(3, 64, 64), num_classes=2, dropout=0.0).attn_dropout == 0
    )
    resnet = build_model(ModelConfig(arch="resnet", in_shape=(3, 32, 32), num_classes=10))
    assert len(resnet.blocks) == 8 and resnet.head.in_features == 512
    cnn = build_model(ModelConfig(arch="cnn", in_shape=(3, 32, 32), num_classes=10))
    assert cnn.fc[0].linear.in_features == 256 * 4 * 4 and cnn.fc[0].linear.out_features == 512
    # the CNN's dropout sits only in its fully connected part
    assert [n for n, m in cnn.named_modules() if isinstance(m, nn.Dropout)] == ["fc.0.drop"]


@pytest.mark.parametrize("activation", MODEL_ACTIVATIONS)
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("after", [False, True])
def test_every_option_and_odd_widths(activation, norm, after):
    """Widths like 48 and 100 (which crashed the reference's norm factory) build and run."""
    small = {
        "mlp": {"hidden_sizes": (48, 100)},
        "cnn": {"conv_channels": (48, 10), "fc_hidden": (100,)},
        "resnet": {"base_channels": 6, "stage_blocks": (1, 1)},
        "vit": {"embed_dim": 48, "n_heads": 3, "depth": 1},
    }
    for arch, kw in small.items():
        cfg = ModelConfig(
            arch=arch,
            in_shape=(3, 16, 16),
            num_classes=3,
            activation=activation,
            norm=norm,
            norm_after_activation=after,
            **kw,
        )
        model = build_model(cfg, seed=1).train()
        out = model(torch.randn(4, 3, 16, 16))
        assert out.shape == (4, 3) and torch.isfinite(out).all()


def test_norm_kinds():
    def norms(arch, norm, **kw):
        cfg = ModelConfig(arch=arch, in_shape=(3, 16, 16), num_classes=2, norm=norm, **kw)
        return {type(m).__name__ for m in build_model(cfg).modules()}

    assert "GroupNorm" in norms("cnn", "layer") and "LayerNorm" not in norms("cnn", "layer")
    assert "GroupNorm" in norms("resnet", "layer", base_channels=4)
    assert "LayerNorm" in norms("mlp", "layer") and "BatchNorm1d" in norms("mlp", "batch")
    assert "TokenBatchNorm" in norms("vit", "batch", embed_dim=8, n_heads=2, depth=1)
    assert not {"BatchNorm2d", "GroupNorm"} & norms("cnn", "none")


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    cfg = ModelConfig(arch="mlp", in_shape=(4,), num_classes=2, hidden_sizes=(5,))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_model(cfg, seed=7), build_model(cfg, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = build_model(cfg, seed=8)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_bitflip_learner_init():
    cfg = ModelConfig(arch="bitflip", in_shape=(21,), num_classes=1, hidden_sizes=(100,))
    model = build_model(cfg, seed=0)
    assert model.fc1.weight.abs().max() <= math.sqrt(2) * math.sqrt(3 / 21)
    assert model.fc1.weight.abs().max() > 0.9 * math.sqrt(2) * math.sqrt(3 / 21)
    assert model.fc2.weight.abs().max() <= math.sqrt(3 / 100)
    assert torch.all(model.fc1.bias == 0) and torch.all(model.fc2.bias == 0)
    assert isinstance(model.act, nn.ReLU)  # a module: the probe sees post-activations
    with pytest.raises(ValueError, match="no norm"):
        build_model(ModelConfig(arch="bitflip", in_shape=(21,), num_classes=1, norm="batch"))


def test_declared_layers_are_hookable_and_shaped():
    expected = {
        "mlp": (["hidden1", "hidden2"], [(4, 6), (4, 5)]),
        "cnn": (["conv1", "conv2", "fc1"], [(4, 4, 8, 8), (4, 6, 4, 4), (4, 5)]),
        "resnet": (
            ["inner1", "block1", "inner2", "block2"],
            [(4, 3, 8, 8), (4, 3, 8, 8), (4, 6, 4, 4), (4, 6, 4, 4)],
        ),
        "vit": (["mlp1", "block1"], [(4, 5, 32), (4, 5, 8)]),
    }
    kw = {
        "mlp": {"hidden_sizes": (6, 5)},
        "cnn": {"conv_channels": (4, 6), "fc_hidden": (5,)},
        "resnet": {"base_channels": 3, "stage_blocks": (1, 1)},
        "vit": {"embed_dim": 8, "n_heads": 2, "depth": 1, "patch_size": 4},
    }
    for arch, (names, shapes) in expected.items():
        cfg = ModelConfig(arch=arch, in_shape=(3, 8, 8), num_classes=3, **kw[arch])
        model = build_model(cfg, seed=0)
        layers = model.declared_layers()
        assert [layer.name for layer in layers] == names
        with capture_layers(model) as rec:
            model(torch.randn(4, 3, 8, 8)).sum().backward()
        assert [tuple(rec.acts[n].shape) for n in names] == shapes
        assert all(rec.grads[n].shape == rec.acts[n].shape for n in names)
        with_activation = [layer for layer in layers if layer.activation is not None]
        assert set(rec.pres) == {layer.name for layer in with_activation}
        for layer in with_activation:  # the activation's input: applying it gives the output
            act = layer.module
            torch.testing.assert_close(act(rec.pres[layer.name]), rec.acts[layer.name])


def test_cnn_declares_the_flatten_columns_of_its_last_conv():
    cfg = ModelConfig(
        arch="cnn", in_shape=(3, 8, 8), num_classes=3, conv_channels=(4, 6), fc_hidden=(5,)
    )
    conv2 = build_model(cfg).declared_layers()[1]
    assert conv2.outgoing_index.shape == (6, 4)  # 6 channels x 2*2 positions
    assert sorted(conv2.outgoing_index.flatten().tolist()) == list(range(24))
    assert conv2.outgoing_index[1].tolist() == [4, 5, 6, 7]  # plain flatten: channel-major


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "transformer"}, "valid: mlp, cnn, resnet, vit, bitflip"),
        ({"arch": "mlp", "activation": "softplus"}, "valid: relu"),
        ({"arch": "mlp", "norm": "group"}, "valid: batch, layer, none"),
        ({"arch": "mlp", "embed_dim": 12}, "do not apply"),
        ({"arch": "mlp", "dropout": 1.0}, r"\[0, 1\)"),
        ({"arch": "vit", "embed_dim": 10, "n_heads": 3}, "not divisible"),
        ({"arch": "cnn", "in_shape": (12,)}, "in_shape"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    full = {"in_shape": (3, 8, 8), "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        ModelConfig(**full)


def test_config_round_trips_through_a_dict():
    cfg = ModelConfig(arch="vit", in_shape=(3, 32, 32), num_classes=10, depth=2).widened(2)
    assert ModelConfig(**cfg.to_dict()) == cfg
    assert cfg.root().widened(2) == cfg and cfg.root().embed_dim == 384
