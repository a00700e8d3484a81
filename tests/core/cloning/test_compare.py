"""compare() sees what the within-clone score cannot, and the cloning score's closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.cloning import cloning_score, compare, expand
from tests.core.cloning.tiny import batch, tiny_config, trained_base


def test_perfect_clone_scores_one_everywhere():
    cfg = tiny_config("resnet", "layer")
    clone = expand(trained_base(cfg), 2)
    x, y = batch(cfg, 8, seed=0)
    scores = cloning_score(clone, x, y)
    assert set(scores) == {
        f"{layer.name}/r2_{d}" for layer in clone.declared_layers() for d in ("forward", "backward")
    } | {"r2_mean"}
    assert all(v == 1.0 for v in scores.values()), scores


def test_cloning_score_closed_form():
    # identity activation, zero weights: every row of the 4 clone units is the bias (1, 3, 5, 5);
    # blocks {1, 3} and {5, 5}: within = 1 + 1 = 2, total = 2.5^2 + 0.5^2 + 1.5^2 + 1.5^2 = 11
    cfg = tiny_config("bitflip", activation="identity", hidden_sizes=(2,))
    clone = expand(trained_base(cfg), 2)
    with torch.no_grad():
        clone.fc1.weight.zero_()
        clone.fc1.bias.copy_(torch.tensor([1.0, 3.0, 5.0, 5.0]))
        clone.fc2.weight.fill_(1.0)  # every unit gets the same gradient: R^2 = 1 by convention
    x, y = batch(cfg, 5, seed=1)
    scores = cloning_score(clone, x, y)
    assert scores["hidden/r2_forward"] == pytest.approx(1 - 2 / 11, abs=1e-12)
    assert scores["hidden/r2_backward"] == 1.0


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
