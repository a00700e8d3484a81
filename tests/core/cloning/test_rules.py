"""Dropout in cloned ViTs (all of it, attention included; shared head masks), the optimizer
rules under which a clone tracks its base (SGD with weight decay, Adam), and the equitable
perturbation's relative scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.cloning import (
    cloning_score,
    equitable_perturbation,
    expand,
    manifold_distance,
    param_groups,
)
from core.models import ModelConfig, build_model
from core.models.vit import Attention
from tests.core.cloning.tiny import batch, tiny_config, train, trained_base

VIT = {"embed_dim": 8, "n_heads": 2, "depth": 2, "patch_size": 4, "norm": "layer"}


def _vit(**kw) -> ModelConfig:
    """A tiny ViT configured as the cloning studies do: `dropout` only, attention left unset."""
    return ModelConfig(arch="vit", in_shape=(3, 8, 8), num_classes=4, **{**VIT, **kw})


def _gaps(cfg, base, *others, seed):
    """max |base(x) - other(x)| of each of `others` on one fresh batch, every model in eval mode."""
    x, _ = batch(cfg, 16, seed=seed)
    with torch.no_grad():
        return [(base.eval()(x) - other.eval()(x)).abs().max().item() for other in others]


def test_vit_at_p_zero_has_no_active_dropout_of_any_kind():
    cfg = ModelConfig(arch="vit", in_shape=(3, 32, 32), num_classes=10, dropout=0.0)
    assert cfg.attn_dropout == 0.0
    model = build_model(cfg)
    assert not [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert all(m.attn_dropout == 0.0 for m in model.modules() if isinstance(m, Attention))
    paper = ModelConfig(arch="vit", in_shape=(3, 32, 32), num_classes=10)
    assert (paper.dropout, paper.attn_dropout) == (0.1, 0.1)  # the paper's default, both
    assert _vit(dropout=0.0, attn_dropout=0.2).attn_dropout == 0.2  # set explicitly: kept


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cloned_vit_at_p_zero_stays_on_the_manifold_bitwise(optimizer):
    cfg = _vit(dropout=0.0)
    clone = expand(trained_base(cfg, dtype=torch.float32), 2).train()
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    }[optimizer](clone.parameters())
    train(clone, cfg, opt, steps=50)
    assert manifold_distance(clone) == 0.0
    x, y = batch(cfg, 16, seed=99, dtype=torch.float32)
    assert cloning_score(clone.eval(), x, y)["r2c_mean"] == 1.0


def test_cloned_vit_with_dropout_leaves_and_the_score_says_so():
    cfg = _vit(dropout=0.1)  # attention dropout 0.1 too
    clone = expand(trained_base(cfg, dtype=torch.float32), 2).train()
    torch.manual_seed(0)  # dropout masks come from the global RNG
    train(clone, cfg, torch.optim.SGD(clone.parameters(), lr=0.05), steps=50)
    assert manifold_distance(clone) > 1e-4
    x, y = batch(cfg, 16, seed=99, dtype=torch.float32)
    scores = cloning_score(clone.eval(), x, y)
    assert scores["r2_mean"] < 1.0 and scores["r2c_mean"] < 1.0


@pytest.mark.parametrize("independent", [False, True])
def test_copies_of_a_head_share_one_attention_mask_unless_asked(independent):
    """Attention dropout alone (p = 0.3): with one mask per base head the clone stays exactly
    on the manifold; with a mask per head (a fused kernel's behaviour) it leaves."""
    cfg = _vit(dropout=0.0, attn_dropout=0.3, independent_head_masks=independent)
    clone = expand(trained_base(cfg, dtype=torch.float32), 2).train()
    torch.manual_seed(1)
    train(clone, cfg, torch.optim.SGD(clone.parameters(), lr=0.05), steps=10)
    if independent:
        assert manifold_distance(clone) > 1e-5
    else:
        assert manifold_distance(clone) == 0.0


def test_shared_masks_drop_the_same_weights_in_every_copy():
    cfg = _vit(dropout=0.0, attn_dropout=0.5)
    clone = expand(trained_base(cfg, dtype=torch.float64), 3).train()
    attn = clone.blocks[0].attn
    assert attn.n_heads == 6 and attn.mask_group == 3
    seen = {}
    hook = attn.proj.register_forward_hook(lambda _m, i, _o: seen.setdefault("in", i[0]))
    torch.manual_seed(2)
    clone(batch(cfg, 4, seed=3)[0])
    hook.remove()
    heads = seen["in"].unflatten(-1, (6, attn.head_dim))  # (B, T, heads, head_dim)
    for h in range(6):
        assert torch.equal(heads[:, :, h], heads[:, :, 3 * (h // 3)])  # copies of base head h//3
    assert not torch.equal(heads[:, :, 0], heads[:, :, 3])


def test_independent_head_masks_only_apply_to_vits():
    with pytest.raises(ValueError, match="independent_head_masks"):
        tiny_config("mlp", independent_head_masks=True)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "vit"])
def test_adam_with_the_rule_tracks_the_base(arch):
    """Adam on the clone with lr / s and eps * c per tensor follows Adam on the base; plain Adam
    does not (float64, 60 steps, train mode)."""
    cfg = tiny_config(arch, "batch")
    base = trained_base(cfg).train()
    ruled, plain = expand(base, 2).train(), expand(base, 2).train()
    train(base, cfg, torch.optim.Adam(base.parameters(), lr=1e-2, eps=1e-8), steps=60)
    train(ruled, cfg, torch.optim.Adam(param_groups(ruled, 1e-2, rule="adam", eps=1e-8)), 60)
    train(plain, cfg, torch.optim.Adam(plain.parameters(), lr=1e-2, eps=1e-8), steps=60)
    ruled_gap, plain_gap = _gaps(cfg, base, ruled, plain, seed=77)
    assert ruled_gap <= 1e-8 and plain_gap > 1e-3


def test_sgd_with_weight_decay_tracks_the_base_only_with_the_decay_rule():
    cfg = tiny_config("mlp", "batch")
    base = trained_base(cfg).train()
    ruled, lr_only = expand(base, 2).train(), expand(base, 2).train()
    wd = 0.1
    train(base, cfg, torch.optim.SGD(base.parameters(), lr=0.05, momentum=0.9, weight_decay=wd), 60)
    train(ruled, cfg, torch.optim.SGD(param_groups(ruled, 0.05, weight_decay=wd), momentum=0.9), 60)
    groups = param_groups(lr_only, 0.05)  # multipliers on the lr alone, decay on the optimizer
    train(lr_only, cfg, torch.optim.SGD(groups, momentum=0.9, weight_decay=wd), 60)
    ruled_gap, lr_only_gap = _gaps(cfg, base, ruled, lr_only, seed=78)
    assert ruled_gap <= 1e-9 and lr_only_gap > 1e-4


def test_rule_groups_by_hand():
    clone = expand(trained_base(tiny_config("mlp", "none")), 3)
    groups = param_groups(clone, 0.1, rule="adam", weight_decay=0.3, eps=1e-8)
    by_tensor = {id(p): g for g in groups for p in g["params"]}
    first, hidden = clone.blocks[0].linear.weight, clone.blocks[1].linear.weight
    head, head_bias = clone.head.weight, clone.head.bias
    # (s, c): first layer (1, 1/3), hidden (3, 3/9), output (3, 1), output bias (1, 1)
    for p, (s, c) in (
        (first, (1, 1 / 3)),
        (hidden, (3, 1 / 3)),
        (head, (3, 1)),
        (head_bias, (1, 1)),
    ):
        g = by_tensor[id(p)]
        assert g["lr"] == pytest.approx(0.1 / s)
        assert g["eps"] == pytest.approx(1e-8 * c)
        assert g["weight_decay"] == pytest.approx(0.3 * s * c)
    with pytest.raises(ValueError, match="valid: sgd, adam"):
        param_groups(clone, 0.1, rule="adamw")


def test_equitable_perturbation_is_relative_to_each_tensor():
    cfg = tiny_config("mlp", "none", hidden_sizes=(6, 5, 4))
    clone = expand(trained_base(cfg), 2)
    with torch.no_grad():
        clone.blocks[2].linear.weight.mul_(1e3)  # a tensor a thousand times larger
    moved = equitable_perturbation(clone, 0.25, torch.Generator().manual_seed(0))
    for i in (1, 2):  # hidden -> hidden weights
        w, t = clone.blocks[i].linear.weight.detach(), moved.blocks[i].linear.weight.detach()
        assert float((t - w).norm() / w.norm()) == pytest.approx(0.25, rel=1e-12)
    with pytest.raises(ValueError, match="scale"):
        equitable_perturbation(clone, -1.0, torch.Generator())
