"""The cloning manifold: exact persistence under SGD/momentum/Adam, escape by dropout or gradient
noise, equitable (non-block-constant) clones, and learning-rate multipliers."""

from __future__ import annotations

import math

import pytest
import torch

from core.cloning import (
    block_mean,
    cloning_score,
    compare,
    equitable_perturbation,
    expand,
    lr_multipliers,
    manifold_distance,
    normal_component,
    param_groups,
)
from core.models import build_model
from tests.core.cloning.tiny import batch, tiny_config, train, trained_base

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}


# Widths whose clones are multiples of 8: float32 BLAS kernels treat a remainder of rows that does
# not fill a SIMD register differently, which can round identical clone rows differently in the
# last bit (docs/cloning.md); at these widths the arithmetic of clones is bitwise symmetric.
SIMD_WIDTHS = {
    "mlp": {"hidden_sizes": (4, 8)},
    "cnn": {"conv_channels": (4, 8), "fc_hidden": (4,)},
    "resnet": {"base_channels": 4},
    "vit": {},
    "bitflip": {"hidden_sizes": (4,)},
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_clone_stays_exactly_on_the_manifold_float32(arch_norm, optimizer):
    arch, norm = arch_norm
    cfg = tiny_config(arch, norm, **SIMD_WIDTHS[arch])
    clone = expand(trained_base(cfg, dtype=torch.float32), 2).train()
    assert manifold_distance(clone) == 0.0
    train(clone, cfg, OPTIMIZERS[optimizer](clone.parameters()), steps=50)
    assert manifold_distance(clone) == 0.0
    x, y = batch(cfg, 16, seed=1234, dtype=torch.float32)
    scores = cloning_score(clone, x, y)
    # a layer with no gradient left at all (a dead ReLU head) has an undefined score: NaN
    assert scores["r2_mean"] == scores["r2c_mean"] == 1.0
    assert all(v == 1.0 or math.isnan(v) for v in scores.values()), scores


def _distances(clone, cfg, checkpoints, grad_noise=0.0):
    """Manifold distance after each number of SGD steps in `checkpoints`."""
    opt = torch.optim.SGD(clone.parameters(), lr=0.05)
    out, done = [], 0
    for steps in checkpoints:
        train(clone, cfg, opt, steps=steps - done, seed=done, grad_noise=grad_noise)
        done = steps
        out.append(manifold_distance(clone))
    return out


@pytest.mark.parametrize("arch", ["mlp", "cnn", "vit"])
def test_dropout_breaks_the_symmetry(arch):
    cfg = tiny_config(arch, "none", dropout=0.3)
    clone = expand(trained_base(cfg, dtype=torch.float32), 2).train()
    torch.manual_seed(0)  # dropout masks come from the global RNG
    d = _distances(clone, cfg, [1, 60])
    assert 0 < d[0] < d[1], d


def test_gradient_noise_breaks_the_symmetry():
    cfg = tiny_config("mlp", "batch")
    clone = expand(trained_base(cfg, dtype=torch.float32), 2).train()
    d = _distances(clone, cfg, [1, 60], grad_noise=0.01)
    assert 0 < d[0] < d[1], d
    x, y = batch(cfg, 16, seed=5, dtype=torch.float32)
    assert cloning_score(clone, x, y)["r2_mean"] < 1.0


def test_block_mean_is_an_orthogonal_projection():
    cfg = tiny_config("cnn", "batch")
    clone = expand(trained_base(cfg), 3)
    g = torch.Generator().manual_seed(0)
    v = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in clone.named_parameters()}
    w = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in clone.named_parameters()}
    pv, nv = block_mean(clone, v), normal_component(clone, v)
    for n in v:  # idempotent, complementary, and self-adjoint
        torch.testing.assert_close(block_mean(clone, {n: pv[n]})[n], pv[n], rtol=0, atol=1e-12)
        torch.testing.assert_close(pv[n] + nv[n], v[n], rtol=0, atol=1e-12)
    inner = sum(float((block_mean(clone, v)[n] * w[n]).sum()) for n in v)
    inner_t = sum(float((v[n] * block_mean(clone, w)[n]).sum()) for n in v)
    assert inner == pytest.approx(inner_t, rel=1e-10)
    assert sum(float((pv[n] * nv[n]).sum()) for n in v) == pytest.approx(0.0, abs=1e-9)
    # a clone is its own block mean; its distance is the norm of the normal component
    assert manifold_distance(clone) == 0.0
    with torch.no_grad():
        for n, p in clone.named_parameters():
            p.add_(nv[n])
    expected = sum(float(nv[n].pow(2).sum()) for n in v) ** 0.5
    assert manifold_distance(clone) == pytest.approx(expected, rel=1e-10)


def test_a_model_that_is_no_clone_has_no_blocks():
    with pytest.raises(ValueError, match="not a clone"):
        manifold_distance(build_model(tiny_config("mlp")))


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "vit"])
def test_equitable_perturbation_keeps_cloning_exact(arch):
    cfg = tiny_config(arch, "batch")
    base = trained_base(cfg).eval()
    clone = expand(base, 2).eval()
    moved = equitable_perturbation(clone, 0.5, torch.Generator().manual_seed(0)).eval()
    assert manifold_distance(moved) > 0.1  # off the block-constant set
    x, y = batch(cfg, 10, seed=4)
    diffs = compare(base, moved, x, y)
    assert max(diffs.values()) <= 1e-9, diffs


def test_equitable_directions_have_zero_row_and_column_block_sums():
    cfg = tiny_config("mlp", "none")
    clone = expand(trained_base(cfg), 3)
    moved = equitable_perturbation(clone, 1.0, torch.Generator().manual_seed(1))
    t = moved.blocks[1].linear.weight - clone.blocks[1].linear.weight  # hidden -> hidden, 15 x 18
    blocks = t.reshape(5, 3, 6, 3)  # (base out, clone, base in, clone)
    assert blocks.abs().max() > 0.1
    torch.testing.assert_close(
        blocks.sum(3), torch.zeros(5, 3, 6, dtype=t.dtype), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        blocks.sum(1), torch.zeros(5, 6, 3, dtype=t.dtype), atol=1e-12, rtol=0
    )
    first = moved.blocks[0].linear.weight - clone.blocks[0].linear.weight  # input -> hidden
    assert torch.equal(first, torch.zeros_like(first))


def test_multipliers_match_the_closed_form():
    cfg = tiny_config("mlp", "batch")
    m = lr_multipliers(expand(trained_base(cfg), 3))
    assert m["blocks.0.linear.weight"] == 3  # first layer
    assert m["blocks.1.linear.weight"] == 1  # hidden -> hidden
    assert m["head.weight"] == pytest.approx(1 / 3)  # output weights
    assert m["blocks.0.linear.bias"] == m["blocks.0.norm.weight"] == 3
    assert m["head.bias"] == 1


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "vit", "bitflip"])
def test_sgd_with_multipliers_tracks_the_base(arch):
    cfg = tiny_config(arch, "batch" if arch != "bitflip" else "none")
    base = trained_base(cfg).train()
    clone = expand(base, 2).train()
    train(base, cfg, torch.optim.SGD(base.parameters(), lr=0.05), steps=100)
    train(clone, cfg, torch.optim.SGD(param_groups(clone, lr=0.05)), steps=100)
    x, _ = batch(cfg, 16, seed=77)
    base.eval(), clone.eval()
    assert (base(x) - clone(x)).abs().max().item() <= 1e-8
