"""Frozen units: |phi'(pre-activation)| < eps on at least a fraction of the rows."""

import pytest
import torch
import torch.nn.functional as F

from core.metrics import Probe, ProbeSpec, frozen_fraction, saturated_fraction
from core.metrics.units import ACTIVATION_SLOPES
from core.models import MODEL_ACTIVATIONS, ModelConfig, build_model, make_activation
from core.models.capture import unit_matrix


@pytest.mark.parametrize("activation", MODEL_ACTIVATIONS)
def test_slopes_are_the_derivatives_of_the_model_activations(activation):
    """Against autograd through the model's own activation module, in float64 (x != 0; autograd's
    1 - tanh^2 loses its relative precision in the tails, hence the absolute tolerance), and
    against the tails' closed forms where phi' is tiny."""
    x = torch.cat([torch.linspace(-30, -0.01, 300), torch.linspace(0.01, 30, 300)]).double()
    x.requires_grad_(True)
    (autograd,) = torch.autograd.grad(make_activation(activation)(x).sum(), x)
    slope = ACTIVATION_SLOPES[activation](x.detach())
    torch.testing.assert_close(slope, autograd, rtol=1e-9, atol=1e-15)
    far = torch.tensor([-20.0], dtype=torch.float64)
    tails = {  # phi'(-20) to relative order 1e-4
        "tanh": 4 * torch.exp(2 * far),  # sech^2 x = 4 e^(2x) / (1 + e^(2x))^2
        "sigmoid": torch.exp(far),
        "elu": torch.exp(far),
        "gelu": (far - 1 / far) * torch.exp(-0.5 * far**2) / (2 * torch.pi) ** 0.5,  # Mills
    }
    if activation in tails:
        assert float(ACTIVATION_SLOPES[activation](far) / tails[activation]) == pytest.approx(
            1.0, rel=1e-4
        )


def test_all_saturated_tanh_layer_is_frozen_and_a_fresh_one_is_not():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 16, generator=g)
    signs = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)
    saturated = signs * (20.0 + z)  # tanh'(20 +- 4) < 1e-12 on every row
    assert frozen_fraction(saturated, "tanh") == 1.0
    assert frozen_fraction(z, "tanh") == 0.0  # unit-scale pre-activations: tanh' >= 0.07 mostly


def test_frozen_by_hand():
    # relu' = 0 where pre <= 0: unit 0 on 4/4 rows, unit 1 on 3/4, unit 2 on 1/4.
    pre = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, -1.0, 2.0], [0.0, -3.0, 3.0], [-1.0, 4.0, -1.0]])
    assert frozen_fraction(pre, "relu") == pytest.approx(1 / 3)  # fraction 0.99: unit 0
    assert frozen_fraction(pre, "relu", fraction=0.75) == pytest.approx(2 / 3)  # "at least"
    assert frozen_fraction(pre, "relu", fraction=0.76) == pytest.approx(1 / 3)
    assert frozen_fraction(pre, "relu", 1e-4, 0.25) == 1.0  # positional eps and fraction
    # leaky relu's slope 0.1 is never below eps = 0.1 (strict), and is below 0.1 + 1e-9
    wide = pre.double()
    assert frozen_fraction(wide, "leaky_relu", eps=0.1, fraction=0.5) == 0.0
    assert frozen_fraction(wide, "leaky_relu", eps=0.1 + 1e-9, fraction=0.5) == pytest.approx(2 / 3)
    assert frozen_fraction(pre, "identity", eps=0.5, fraction=0.01) == 0.0  # never frozen
    # sigmoid'(x) = s(x) s(-x) ~ e^-|x|: below 1e-4 beyond |x| = 9.21
    far = torch.tensor([[9.0, -9.3], [-9.0, 12.0]])
    assert frozen_fraction(far, "sigmoid", eps=1e-4, fraction=1.0) == pytest.approx(1 / 2)
    # ELU: exp(x) < 1e-4 for x < -9.21 only; SELU scales it by 1.7581
    assert frozen_fraction(torch.tensor([[-9.3, -9.0]]), "elu") == pytest.approx(1 / 2)
    assert frozen_fraction(torch.tensor([[-9.8, -9.7]]), "selu") == pytest.approx(1 / 2)
    # GELU' = Phi(x) + x phi(x) vanishes at x = -0.75179 and in its negative tail
    assert frozen_fraction(torch.tensor([[-0.75179, -0.6, -8.0]]).double(), "gelu") == 2 / 3


def test_frozen_fraction_refuses_unknown_activations():
    with pytest.raises(ValueError, match="valid: relu, leaky_relu, tanh"):
        frozen_fraction(torch.zeros(3, 2), "softplus")
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        frozen_fraction(torch.zeros(3, 2), "relu", fraction=0.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        frozen_fraction(torch.zeros(3, 2), "relu", eps=0.0)


def _tanh_mlp():
    cfg = ModelConfig(
        arch="mlp", in_shape=(3, 8, 8), num_classes=3, hidden_sizes=(12, 10), activation="tanh"
    )
    return build_model(cfg, seed=0).double()


def test_probe_reports_frozen_units_from_pre_activations():
    model = _tanh_mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    spec = ProbeSpec(metrics=("frozen_fraction", "saturated_fraction"))

    def probe():
        return Probe(model, x, y, F.cross_entropy, spec, generator=torch.Generator())()

    fresh = probe()
    assert fresh["hidden1/frozen_fraction"] == fresh["hidden2/frozen_fraction"] == 0.0
    with torch.no_grad():  # BN shift +-30 on every unit of hidden1: tanh saturates everywhere
        model.blocks[0].norm.bias.copy_(30.0 * torch.where(torch.arange(12) % 2 == 0, 1.0, -1.0))
    frozen = probe()
    assert frozen["hidden1/frozen_fraction"] == 1.0
    # saturated_fraction reads the gradient at the units' output, not phi': it misses some
    assert frozen["hidden1/saturated_fraction"] < 1.0
    pre = {}
    hook = model.blocks[0].act.register_forward_hook(lambda _m, i, _o: pre.setdefault("z", i[0]))
    model.eval()(x)
    hook.remove()
    assert frozen["hidden1/frozen_fraction"] == frozen_fraction(unit_matrix(pre["z"]), "tanh")


def test_probe_skips_frozen_units_where_a_layer_has_no_activation():
    cfg = ModelConfig(
        arch="resnet", in_shape=(3, 8, 8), num_classes=3, base_channels=4, stage_blocks=(1, 1)
    )
    model = build_model(cfg, seed=0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    spec = ProbeSpec(metrics=("frozen_fraction", "dead_fraction"))
    result = Probe(model, x, y, F.cross_entropy, spec, generator=torch.Generator())()
    assert "block1/dead_fraction" in result and "block1/frozen_fraction" not in result


def test_saturated_fraction_is_not_frozen_fraction():
    """The tanh layer of the issue: every unit frozen, yet the downstream gradient is not small
    against the activation size on most rows (unit outgoing weights)."""
    g = torch.Generator().manual_seed(2)
    pre = 20.0 + torch.randn(200, 8, generator=g, dtype=torch.float64)
    h = torch.tanh(pre)
    grad_out = torch.randn(200, 8, generator=g, dtype=torch.float64)  # d loss / d h
    assert frozen_fraction(pre, "tanh") == 1.0
    assert saturated_fraction(h, grad_out) == 0.0
