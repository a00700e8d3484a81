"""compare() sees what the within-clone score cannot, and the cloning score's closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.cloning import cloning_score, compare, expand, manifold_distance
from tests.core.cloning.tiny import batch, tiny_config, trained_base


def test_perfect_clone_scores_one_everywhere():
    cfg = tiny_config("resnet", "layer")
    clone = expand(trained_base(cfg), 2)
    x, y = batch(cfg, 8, seed=0)
    scores = cloning_score(clone, x, y)
    assert set(scores) == {
        f"{layer.name}/{score}_{d}"
        for layer in clone.declared_layers()
        for d in ("forward", "backward")
        for score in ("r2", "r2c")
    } | {"r2_mean", "r2c_mean"}
    assert all(v == 1.0 for v in scores.values()), scores


def _identity_clone(hidden: int):
    cfg = tiny_config("bitflip", activation="identity", hidden_sizes=(hidden,))
    return cfg, expand(trained_base(cfg), 2)


def test_cloning_score_closed_form():
    # identity activation, zero weights: every row of the 4 clone units is the bias (1, 3, 5, 5);
    # blocks {1, 3} and {5, 5}: within = 1 + 1 = 2, total = 2.5^2 + 0.5^2 + 1.5^2 + 1.5^2 = 11
    cfg, clone = _identity_clone(2)
    with torch.no_grad():
        clone.fc1.weight.zero_()
        clone.fc1.bias.copy_(torch.tensor([1.0, 3.0, 5.0, 5.0]))
        clone.fc2.weight.fill_(1.0)  # every unit gets the same gradient: nothing to explain
    x, y = batch(cfg, 5, seed=1)
    scores = cloning_score(clone, x, y)
    assert scores["hidden/r2_forward"] == pytest.approx(1 - 2 / 11, abs=1e-12)
    assert scores["hidden/r2c_forward"] == pytest.approx(2 * (1 - 2 / 11) - 1, abs=1e-12)
    assert math.isnan(scores["hidden/r2_backward"]) and math.isnan(scores["hidden/r2c_backward"])
    assert scores["r2_mean"] == scores["hidden/r2_forward"]  # the defined entries only


def test_cloning_score_centres_each_row_on_its_own_layer_mean():
    """Rows that differ: unit values (1, 3, 5, 5) + c_i, c_i = w . x_i shared by the 4 units.
    Centring each row on its own mean removes c_i (R^2 = 1 - 2/11 on every row); a layer mean
    over all rows would add 4 sum_i (c_i - mean c)^2 to the total, hand-computed here."""
    cfg, clone = _identity_clone(2)
    x, y = batch(cfg, 6, seed=2)
    w = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    with torch.no_grad():
        clone.fc1.weight.copy_(w.expand(4, 21))
        clone.fc1.bias.copy_(torch.tensor([1.0, 3.0, 5.0, 5.0]))
    c = x @ w  # (6,)
    assert float(c.std()) > 0.5  # the rows really differ
    r2 = cloning_score(clone, x, y)["hidden/r2_forward"]
    assert r2 == pytest.approx(1 - 2 / 11, abs=1e-12)
    pooled_total = 6 * 11 + 4 * float(((c - c.mean()) ** 2).sum())
    assert r2 != pytest.approx(1 - 12 / pooled_total, abs=1e-3)


def test_an_escaped_clone_scores_one_over_e_and_zero_chance_corrected():
    cfg, clone = _identity_clone(100)
    with torch.no_grad():  # independent random units: nothing left of the clone structure
        clone.fc1.weight.copy_(torch.randn(200, 21, generator=torch.Generator().manual_seed(3)))
        clone.fc1.bias.zero_()
    x, y = batch(cfg, 400, seed=4)
    scores = cloning_score(clone, x, y)
    assert scores["hidden/r2_forward"] == pytest.approx(0.5, abs=0.05)
    assert scores["hidden/r2c_forward"] == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "vit"])
def test_checks_leave_the_model_state_alone(arch):
    """In train mode BatchNorm normalises with batch statistics; the running statistics, the
    batch counts, the modes and the parameters' .grad stay as they were."""
    cfg = tiny_config(arch, "batch")
    base = trained_base(cfg).train()
    clone = expand(base, 2).train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (base, clone)]
    for p in clone.parameters():
        p.grad = None
    x, y = batch(cfg, 8, seed=5)
    cloning_score(clone, x, y)
    compare(base, clone, x, y)
    manifold_distance(clone)
    for model, state in zip((base, clone), before):
        assert model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in clone.parameters())


def test_broken_clone_is_seen_by_both_checks():
    cfg = tiny_config("mlp", "none")
    base = trained_base(cfg).eval()
    clone = expand(base, 2).eval()
    with torch.no_grad():
        clone.blocks[1].linear.weight[0].add_(0.3)  # one clone of unit 0 of hidden2 moves
    x, y = batch(cfg, 8, seed=2)
    diffs = compare(base, clone, x, y)
    assert diffs["hidden1/forward"] <= 1e-12  # upstream of the change: still exact
    assert diffs["hidden2/forward"] > 1e-3
    assert cloning_score(clone, x, y)["hidden2/r2_forward"] < 1.0


def test_compare_catches_uncloned_norm_affine_parameters():
    """The reference code left GroupNorm affine parameters at their init: its within-clone score
    still read 1, the base-vs-clone comparison does not."""
    cfg = tiny_config("cnn", "layer")
    base = trained_base(cfg).eval()
    clone = expand(base, 2).eval()
    with torch.no_grad():
        for m in clone.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
    x, y = batch(cfg, 8, seed=3)
    assert compare(base, clone, x, y)["output"] > 1e-3
    assert cloning_score(clone, x, y)["r2_mean"] == 1.0


def test_cloning_score_needs_a_clone():
    cfg = tiny_config("mlp")
    x, y = batch(cfg, 4, seed=0)
    with pytest.raises(ValueError, match="clone_factor"):
        cloning_score(trained_base(cfg), x, y)
