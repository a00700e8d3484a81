"""Continual Backprop, ReDo and the optimizer-state helper, on the models' declared layers."""

import math

import pytest
import torch
from torch import nn

from core.models import ModelConfig, build_model
from core.optim import (
    ROUNDINGS,
    UTIL_TYPES,
    CBPState,
    ContinualBackprop,
    ReDo,
    ShrinkPerturb,
    reset_optimizer_state,
    unit_layer_names,
)

CONFIGS = {
    "mlp": ModelConfig("mlp", (6,), 3, hidden_sizes=(8, 8), norm="none", dropout=0.0),
    "mlp-batch": ModelConfig("mlp", (6,), 3, hidden_sizes=(8, 8), norm="batch", dropout=0.0),
    "cnn": ModelConfig(
        "cnn", (3, 8, 8), 4, conv_channels=(4, 6), fc_hidden=(8,), norm="none", dropout=0.0
    ),
    "cnn-layer": ModelConfig(
        "cnn", (3, 8, 8), 4, conv_channels=(4, 6), fc_hidden=(8,), norm="layer", dropout=0.0
    ),
    "vit": ModelConfig(
        "vit",
        (3, 8, 8),
        4,
        embed_dim=8,
        depth=1,
        n_heads=2,
        patch_size=4,
        dropout=0.0,
        attn_dropout=0.0,
    ),
    "resnet": ModelConfig(
        "resnet", (3, 8, 8), 4, base_channels=4, stage_blocks=(1, 1), dropout=0.0
    ),
    "bitflip": ModelConfig("bitflip", (21,), 1, hidden_sizes=(5,)),
}
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}


def _batch(cfg: ModelConfig, n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *cfg.in_shape, generator=torch.Generator().manual_seed(seed))


def _seeded_cbp(model, optimizer, seed=0, **options) -> ContinualBackprop:
    return ContinualBackprop(
        model, optimizer, **options, generator=torch.Generator().manual_seed(seed)
    )


def _step(model, optimizer, x, cbp=None) -> int:
    """One training step; the units `cbp` (or ReDo) replaced, summed over its layers."""
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return sum(cbp.step().values()) if cbp is not None else 0


@pytest.mark.parametrize("arch", ["mlp-batch", "cnn", "vit"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_rate_zero_is_the_base_optimizer_bit_for_bit(arch, opt):
    cfg = CONFIGS[arch]
    a, b = build_model(cfg, seed=0), build_model(cfg, seed=0)
    opt_a, opt_b = OPTIMIZERS[opt](a.parameters()), OPTIMIZERS[opt](b.parameters())
    cbp = _seeded_cbp(b, opt_b, seed=1, replacement_rate=0.0, maturity=0)
    for t in range(6):
        x = _batch(cfg, seed=t)
        _step(a, opt_a, x)
        assert _step(b, opt_b, x, cbp) == 0
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_carry_mode_replaces_floor_of_rate_times_cumulative_mature_count():
    cfg = CONFIGS["mlp"]
    model = build_model(cfg, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rate = 0.07
    cbp = _seeded_cbp(model, opt, seed=2, replacement_rate=rate, maturity=5, rounding="carry")
    seen = [0] * len(cbp.states)
    replaced = [0] * len(cbp.states)
    for t in range(300):
        mature = [int((s.age + 1 > 5).sum()) for s in cbp.states]  # ages after this step's +1
        _step(model, opt, _batch(cfg, seed=t), cbp)
        for i, state in enumerate(cbp.states):
            seen[i] += mature[i]
            replaced[i] += int((state.age == 0).sum())  # replaced units restart at age 0
            assert replaced[i] == math.floor(rate * seen[i])
    assert min(replaced) > 10


def test_bernoulli_rounding_has_the_expected_count():
    """k = rate |E| < 1: one replacement with probability k; k >= 1: floor(k)."""
    members, units = 4000, 10
    for rate, mean, exact in ((0.03, 0.3, False), (0.25, 2.0, True)):
        state = CBPState(
            members,
            units,
            replacement_rate=rate,
            decay=0.0,
            maturity=0,
            util_type="contribution",
            rounding="bernoulli",
        )
        u = torch.rand(members, generator=torch.Generator().manual_seed(0))
        h = torch.rand(members, 1, units, generator=torch.Generator().manual_seed(1))
        _, mask, r = state.step(h, torch.ones(members, units), None, u)
        assert torch.equal(mask.sum(1), r)
        if exact:
            assert torch.all(r == 2)
        else:
            assert r.float().mean().item() == pytest.approx(mean, abs=4 * math.sqrt(0.21 / members))


def test_replaces_the_lowest_utility_mature_units_only():
    state = CBPState(
        1,
        4,
        replacement_rate=0.5,
        decay=0.0,
        maturity=2,
        util_type="contribution",
        rounding="carry",
    )
    state.age.copy_(torch.tensor([[5.0, 0.0, 5.0, 5.0]]))  # unit 1 is immature (age 1 <= 2)
    h = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])
    out = torch.tensor([[0.3, 0.01, 0.2, 0.9]])  # decay 0: uhat = out * |h|
    order, mask, r = state.step(h, out, None, torch.zeros(1))
    assert r.tolist() == [1]  # floor(0.5 * 3 mature)
    assert mask.tolist() == [[False, False, True, False]]
    assert order[0].tolist() == [2, 0, 3, 1]


def _one_hidden_layer(seed=0):
    cfg = ModelConfig("mlp", (6,), 2, hidden_sizes=(8,), norm="none", dropout=0.0)
    return cfg, build_model(cfg, seed=seed)


def _cbp_until_first_replacement(model, optimizer, cbp, x):
    for _ in range(50):
        if _step(model, optimizer, x, cbp):
            return
    raise AssertionError("no replacement happened")


def _frozen_with_cbp(model, bias_correction: bool = True):
    """SGD with lr 0 (weights move only by replacements) and CBP replacing fast: one unit in 8,
    maturity 3."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cbp = ContinualBackprop(
        model,
        opt,
        replacement_rate=0.125,
        maturity=3,
        decay=0.9,
        bias_correction=bias_correction,
        generator=torch.Generator().manual_seed(0),
    )
    return opt, cbp


@pytest.mark.parametrize("bias_correction", [True, False])
def test_output_change_at_a_replacement_is_the_documented_approximation(bias_correction):
    """Frozen weights (lr 0) and a fixed training batch X: fhat_i = mean_X h_i exactly, and a
    replacement moves the output on any x by -W_out[:, i] (h_i(x) - fhat_i) (with the bias
    correction) or by -W_out[:, i] h_i(x) (without, the reference code's no-op)."""
    cfg, model = _one_hidden_layer()
    opt, cbp = _frozen_with_cbp(model, bias_correction=bias_correction)
    x_train, x_probe = _batch(cfg, seed=1), _batch(cfg, n=32, seed=2)
    block = model.blocks[0]
    hidden = lambda x: block.act(block.linear(x))  # noqa: E731
    with torch.no_grad():
        h_train, h_probe, before = hidden(x_train), hidden(x_probe), model(x_probe)
        w_out = model.head.weight.clone()
    _cbp_until_first_replacement(model, opt, cbp, x_train)
    (i,) = (cbp.states[0].age[0] == 0).nonzero()[0].tolist()
    mean = h_train[:, i].mean() if bias_correction else 0.0
    with torch.no_grad():
        after = model(x_probe)
    expected = -(h_probe[:, i] - mean)[:, None] * w_out[:, i]
    torch.testing.assert_close(after - before, expected, atol=1e-6, rtol=0)
    assert torch.all(model.head.weight[:, i] == 0)


def test_a_constant_unit_is_replaced_without_changing_the_output():
    cfg = ModelConfig("mlp", (6,), 2, hidden_sizes=(8, 8), norm="none", dropout=0.0)
    model = build_model(cfg, seed=0)
    first, second = model.blocks[0].linear, model.blocks[1].linear
    with torch.no_grad():
        first.weight[3] = 0
        first.bias[3] = 0.7  # relu(0.7): a constant unit
        second.weight[:, 3] *= 1e-3  # the lowest contribution in its layer
    opt, cbp = _frozen_with_cbp(model)
    x_probe = _batch(cfg, n=32, seed=5)
    with torch.no_grad():
        before = model(x_probe)
    cbp.states[1].age.fill_(-100)  # keep the second layer immature: only layer 1 replaces
    _cbp_until_first_replacement(model, opt, cbp, _batch(cfg, seed=4))
    assert cbp.states[0].age[0, 3] == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x_probe), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_optimizer_state_of_reset_weights_is_zero(opt):
    cfg = CONFIGS["mlp-batch"]
    model = build_model(cfg, seed=0)
    optimizer = OPTIMIZERS[opt](model.parameters())
    cbp = _seeded_cbp(model, optimizer, replacement_rate=0.2, maturity=4)
    for t in range(20):
        if _step(model, optimizer, _batch(cfg, seed=t), cbp):
            break
    else:
        raise AssertionError("no replacement happened")
    layer_index = next(k for k, s in enumerate(cbp.states) if (s.age == 0).any())
    layer = cbp.layers[layer_index].layer
    units = (cbp.states[layer_index].age[0] == 0).nonzero().flatten()
    keys = ["momentum_buffer"] if opt == "momentum" else ["exp_avg", "exp_avg_sq"]
    touched = [
        (layer.incoming.weight, units),
        (layer.incoming.bias, units),
        (layer.norm.weight, units),
        (layer.norm.bias, units),
        (layer.outgoing.weight, (slice(None), units)),
    ]
    for param, index in touched:
        for key in keys:
            buffer = optimizer.state[param][key]
            assert torch.all(buffer[index] == 0)
            assert buffer.abs().sum() > 0  # the other entries keep their state
    assert torch.all(layer.norm.weight[units] == 1) and torch.all(layer.norm.bias[units] == 0)
    assert torch.all(layer.norm.running_var[units] == 1)


@pytest.mark.parametrize(
    "arch", ["mlp", "mlp-batch", "cnn", "cnn-layer", "resnet", "vit", "bitflip"]
)
def test_replacement_postconditions_on_every_architecture(arch):
    """A few replacements in every layer that can host CBP (the ResNet's block-inner channels,
    the ViT's MLP units, ...): new incoming weights within the activation's uniform bound,
    incoming bias 0, the following norm reset, the unit's outgoing columns (behind a flatten:
    all of its flattened positions) 0; the network stays finite."""
    cfg = CONFIGS[arch]
    model = build_model(cfg, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cbp = _seeded_cbp(model, optimizer, replacement_rate=0.3, maturity=2)
    seen = set()
    for t in range(8):
        _step(model, optimizer, _batch(cfg, seed=t), cbp)
        replaced_rows = {  # a consumer's rows replaced in the same step got new weights
            id(unit.layer.incoming): (state.age[0] == 0).nonzero().flatten()
            for unit, state in zip(cbp.layers, cbp.states)
        }
        for unit, state in zip(cbp.layers, cbp.states):
            replaced = (state.age[0] == 0).nonzero().flatten()
            if len(replaced) == 0:
                continue
            seen.add(unit.layer.name)
            layer = unit.layer
            w_in = layer.incoming.weight[replaced]
            assert w_in.abs().max() <= unit.bound and w_in.abs().max() > 0
            if layer.incoming.bias is not None:
                assert torch.all(layer.incoming.bias[replaced] == 0)
            if layer.norm is not None:
                assert torch.all(layer.norm.weight[replaced] == 1)
                assert torch.all(layer.norm.bias[replaced] == 0)
            w_out = layer.outgoing.weight.detach().clone()
            w_out[replaced_rows.get(id(layer.outgoing), [])] = 0
            if layer.outgoing_index is not None:
                assert torch.all(w_out[:, layer.outgoing_index[replaced].flatten()] == 0)
            else:
                assert torch.all(w_out[:, replaced] == 0)
    expected = {layer.name for layer in model.declared_layers() if layer.has_units}
    assert seen == expected
    assert torch.isfinite(model(_batch(cfg))).all()


def test_redo_resets_exactly_the_dormant_units():
    cfg, model = _one_hidden_layer()
    linear = model.blocks[0].linear
    with torch.no_grad():
        linear.weight[[1, 4]] = 0
        linear.bias[[1, 4]] = -1.0  # relu: never active
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    redo = ReDo(
        model, optimizer, threshold=0.1, period=2, generator=torch.Generator().manual_seed(0)
    )
    before = linear.weight.detach().clone()
    x = _batch(cfg)
    assert _step(model, optimizer, x, redo) == 0  # not a reset step
    assert _step(model, optimizer, x, redo) == 2
    changed = (linear.weight != before).any(1).nonzero().flatten().tolist()
    assert changed == [1, 4]
    assert torch.all(model.head.weight[:, [1, 4]] == 0)
    assert redo.step() == {"hidden1": 0}  # one count per declared layer


def test_reset_optimizer_state_is_generic():
    p = nn.Parameter(torch.ones(3, 4))
    for make in OPTIMIZERS.values():
        opt = make([p])
        p.grad = torch.ones(3, 4)
        opt.step()
        reset_optimizer_state(opt, p, (slice(None), 2))
        for value in opt.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                assert torch.all(value[:, 2] == 0) and torch.all(value[:, :2] != 0)
    assert opt.state[p]["step"] == 1  # scalar state left alone


def test_shrink_and_perturb():
    p = nn.Parameter(torch.full((20_000,), 2.0, dtype=torch.float64))
    ShrinkPerturb([p], shrink=0.25, generator=torch.Generator().manual_seed(0)).step()
    assert torch.all(p == 1.5)
    ShrinkPerturb([p], noise_std=0.1, generator=torch.Generator().manual_seed(0)).step()
    assert (p - 1.5).std().item() == pytest.approx(0.1, rel=0.05)
    with pytest.raises(TypeError, match="Generator"):
        ShrinkPerturb([p], noise_std=0.1, generator=None)


# --- CBP against a hand-written reference, step by step ------------------------------------------


def _reference_utility(kind, h, fhat, out, inn):
    """y_i of Dohare et al.'s GnT, written out for a batch h (B, units)."""
    dev = (h - fhat).abs().mean(0)
    return {
        "contribution": out * h.abs().mean(0),
        "zero_contribution": out * dev,
        "adaptable_contribution": out * dev / inn,
        "feature_by_input": dev / inn,
        "weight": out,
        "adaptation": 1 / inn,
    }[kind]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("util_type", UTIL_TYPES)
def test_cbp_equals_a_hand_written_reference_step_by_step(util_type, rounding):
    """Decay 0.99, batches of 4, units of mixed ages (replacements every few steps): after every
    step the weights, utilities, running means and ages equal those of a plain re-statement of
    the algorithm (ages, bias-corrected means and utilities, the count rule, the lowest mature
    uhat, the new row from the step's uniforms, the bias correction, the outgoing zeros)."""
    cfg = ModelConfig("mlp", (6,), 2, hidden_sizes=(8,), norm="none", dropout=0.0)
    model = build_model(cfg, seed=0).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rate, eta, maturity, units, fan_in = 0.15, 0.99, 5, 8, 6
    cbp = ContinualBackprop(
        model,
        opt,
        replacement_rate=rate,
        decay=eta,
        maturity=maturity,
        util_type=util_type,
        rounding=rounding,
        generator=torch.Generator().manual_seed(1),
    )
    draws = torch.Generator()
    draws.set_state(cbp.generators[0].get_state())  # the layer's stream, replayed by the reference
    linear, head = model.blocks[0].linear, model.head
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
    age = torch.zeros(units, dtype=torch.float64)
    util = torch.zeros(units, dtype=torch.float64)
    mean = torch.zeros(units, dtype=torch.float64)
    seen = replaced = 0
    ages_at_replacement = set()
    data = torch.Generator().manual_seed(2)
    for _ in range(150):
        x = torch.randn(4, 6, generator=data, dtype=torch.float64)
        with torch.no_grad():
            h = torch.relu(x @ linear.weight.T + linear.bias)  # pre-update activations
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w, b, v, c = (
                t.detach().clone() for t in (linear.weight, linear.bias, head.weight, head.bias)
            )
        n_draws = 1 + (units if util_type == "random" else 0) + math.ceil(rate * units) * fan_in
        u = torch.rand(n_draws, generator=draws, dtype=torch.float64)
        age += 1
        corr = 1 - eta**age
        mean = eta * mean + (1 - eta) * h.mean(0)
        fhat = mean / corr
        if util_type == "random":
            uhat = u[1 : 1 + units]
            rows = u[1 + units :]
        else:
            y = _reference_utility(util_type, h, fhat, v.abs().mean(0), w.abs().mean(1))
            util = eta * util + (1 - eta) * y
            uhat = util / corr
            rows = u[1:]
        mature = [i for i in range(units) if age[i] > maturity]
        if rounding == "carry":
            seen += len(mature)
            r = math.floor(rate * seen) - replaced
        else:
            k = rate * len(mature)
            r = math.floor(k) if k >= 1 else int(u[0] < k)
        r = min(r, math.ceil(rate * units))
        replaced += r
        chosen = sorted(mature, key=lambda i: (float(uhat[i]), i))[:r]
        for j, i in enumerate(chosen):
            ages_at_replacement.add(int(age[i]))
            w[i] = (2 * rows[j * fan_in : (j + 1) * fan_in] - 1) * bound
            b[i] = 0
            c += v[:, i] * fhat[i]
            v[:, i] = 0
            util[i] = mean[i] = age[i] = 0
        assert cbp.step() == {"hidden1": len(chosen)}
        state = cbp.states[0]
        for got, want in ((linear.weight, w), (linear.bias, b), (head.weight, v), (head.bias, c)):
            torch.testing.assert_close(got.detach(), want, atol=1e-12, rtol=0)
        torch.testing.assert_close(state.age[0], age, atol=0, rtol=0)
        torch.testing.assert_close(state.mean[0], mean, atol=1e-12, rtol=0)
        if util_type != "random":
            torch.testing.assert_close(state.util[0], util, atol=1e-12, rtol=0)
    assert replaced >= 15 and len(ages_at_replacement) > 3  # many replacements, of mixed ages


def test_random_utility_replaces_the_mature_unit_with_the_lowest_draw():
    state = CBPState(
        1, 4, replacement_rate=0.25, decay=0.99, maturity=0, util_type="random", rounding="carry"
    )
    draws = torch.tensor([[0.5, 0.7, 0.2, 0.9, 0.4, *([0.0] * 3)]])
    uniform, util, rows = state.split_draws(draws, fan_in=3)
    assert torch.equal(util, draws[:, 1:5]) and rows.shape == (1, 1, 3)
    h = torch.ones(1, 2, 4)
    _, mask, r = state.step(h, torch.ones(1, 4), None, uniform, util_uniforms=util)
    assert r.tolist() == [1] and mask.tolist() == [[False, True, False, False]]


def test_a_generator_is_required_and_layers_are_checked():
    model = build_model(CONFIGS["mlp"], seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="torch.Generator"):
        ContinualBackprop(model, opt, generator=None)
    with pytest.raises(TypeError, match="torch.Generator"):
        ReDo(model, opt, generator=None)
    with pytest.raises(ValueError, match="valid: hidden1, hidden2"):
        ContinualBackprop(model, opt, generator=torch.Generator(), layers=["head"])
    resnet = build_model(CONFIGS["resnet"], seed=0)
    assert unit_layer_names(resnet) == ["inner1", "inner2"]
    cbp = ContinualBackprop(resnet, None, generator=torch.Generator(), layers=["inner2"])
    assert [unit.layer.name for unit in cbp.layers] == ["inner2"]


def test_bias_correction_is_skipped_before_a_normalised_layer():
    model = build_model(CONFIGS["mlp-batch"], seed=0)
    cbp = ContinualBackprop(model, None, generator=torch.Generator())
    # hidden1 feeds hidden2's Linear, which a BatchNorm follows; hidden2 feeds the head
    assert [unit.bias_correctable for unit in cbp.layers] == [False, True]
    plain = ContinualBackprop(
        build_model(CONFIGS["mlp"], seed=0), None, generator=torch.Generator()
    )
    assert [unit.bias_correctable for unit in plain.layers] == [True, True]
