"""expand() gives a wider model computing exactly the base function (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.cloning import compare, expand
from tests.core.cloning.tiny import batch, tiny_config, trained_base

TOL = 1e-9


def _affine_and_stats(model: nn.Module) -> list[tuple[str, torch.Tensor, float]]:
    """(name, tensor, initial value) for every norm affine parameter and running statistic."""
    out = []
    for mname, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            out += [(f"{mname}.weight", m.weight, 1.0), (f"{mname}.bias", m.bias, 0.0)]
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                out += [(f"{mname}.running_mean", m.running_mean, 0.0)]
                out += [(f"{mname}.running_var", m.running_var, 1.0)]
    return out


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_clone_computes_the_base_function(arch_norm, factor, mode):
    arch, norm = arch_norm
    cfg = tiny_config(arch, norm)
    base = trained_base(cfg)
    for name, tensor, init in _affine_and_stats(base):
        assert not torch.all(tensor == init), f"{name} still at its initial value"
    before = {k: v.clone() for k, v in base.state_dict().items()}

    clone = expand(base, factor)

    for k, v in base.state_dict().items():  # the input model is not mutated
        assert torch.equal(v, before[k]), k
    assert clone.cfg.clone_factor == factor
    base.train(mode == "train")
    clone.train(mode == "train")
    x, y = batch(cfg, 12, seed=7)
    with torch.no_grad():
        assert base(x).std(dim=0).min() > 1e-5  # a live network, not a constant function
    diffs = compare(base, clone, x, y)
    for key in ("output", "loss", "input_grad"):
        assert diffs[key] <= TOL, (key, diffs[key])
    for layer in base.declared_layers():
        assert diffs[layer.name] <= TOL, (layer.name, diffs)
        assert diffs[f"{layer.name}/forward"] <= TOL
        assert diffs[f"{layer.name}/backward"] <= TOL


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "vit"])
def test_repeated_expansion_composes(arch):
    cfg = tiny_config(arch, "batch")
    base = trained_base(cfg).eval()
    twice = expand(expand(base, 2), 3)
    once = expand(base, 6)
    assert twice.cfg == once.cfg and twice.cfg.clone_factor == 6
    for (k, a), b in zip(twice.state_dict().items(), once.state_dict().values()):
        assert torch.equal(a, b), k
    x, y = batch(cfg, 10, seed=3)
    diffs = compare(base, twice.eval(), x, y)
    assert max(diffs.values()) <= TOL, diffs


def test_vit_heads_are_duplicated_not_widened():
    cfg = tiny_config("vit", "layer")
    clone = expand(trained_base(cfg), 2)
    assert clone.cfg.n_heads == 2 * cfg.n_heads
    assert clone.cfg.head_dim == cfg.head_dim
    # large attention weights make any temperature error visible in the outputs
    base = trained_base(cfg)
    with torch.no_grad():
        for block in base.blocks:
            block.attn.qkv.weight.mul_(20)
    base.eval()
    x, y = batch(cfg, 6, seed=1)
    assert compare(base, expand(base, 2).eval(), x, y)["output"] <= TOL


def test_cnn_flatten_handles_odd_factor_and_widths():
    cfg = tiny_config("cnn", "layer", conv_channels=(5, 7), fc_hidden=(3, 2))
    base = trained_base(cfg).eval()
    clone = expand(base, 3).eval()
    assert clone.flatten.factor == 3
    x, y = batch(cfg, 5, seed=2)
    assert compare(base, clone, x, y)["output"] <= TOL


@pytest.mark.parametrize("factor", [1, 0, 2.0, True])
def test_bad_factor_is_refused(factor):
    with pytest.raises(ValueError, match="integer >= 2"):
        expand(trained_base(tiny_config("mlp")), factor)


def test_expand_needs_a_project_model():
    with pytest.raises(TypeError, match="build_model"):
        expand(nn.Linear(3, 3), 2)
