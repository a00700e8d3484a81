"""`core.diagnose.diagnose` on built-in clones, equitable perturbations, fresh models, planted
frozen units, a user-defined residual MLP, and hand-built stable / unstable manifolds checked
against a dense float64 Hessian (paper Theorem 2.1, Def. A.2)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.cloning import equitable_perturbation, expand
from core.diagnose import diagnose
from core.models import ModelConfig, build_model

F64 = torch.float64
SMALL = {
    "mlp": {"in_shape": (3, 6, 6), "hidden_sizes": (5, 4), "dropout": 0.0},
    "cnn": {"in_shape": (3, 8, 8), "conv_channels": (3, 4, 5), "fc_hidden": (6,), "dropout": 0.0},
    "resnet": {"in_shape": (3, 8, 8), "base_channels": 3, "stage_blocks": (1, 1)},
    "vit": {
        "in_shape": (3, 8, 8),
        "embed_dim": 8,
        "n_heads": 2,
        "depth": 2,
        "patch_size": 4,
        "dropout": 0.0,
    },
}


def _base(arch, **kw):
    return build_model(ModelConfig(arch=arch, num_classes=4, **{**SMALL[arch], **kw}), seed=0)


def _batch(shape, n=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


def _interleaved(units, factor):
    return [list(range(k, k + factor)) for k in range(0, units, factor)]


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_the_planted_partition_of_an_expanded_model_is_found_exactly(arch):
    base = _base(arch).eval()
    clone = expand(base, 2).eval()
    x, y = _batch(SMALL[arch]["in_shape"])
    fresh = diagnose(base, x, y, F.cross_entropy, stability=False)
    d = diagnose(clone, x, y, F.cross_entropy, lanczos_steps=6)
    assert set(d.layers) >= {layer.name for layer in clone.declared_layers()}
    for layer in clone.declared_layers():
        found = d.layers[layer.name]
        assert found.clone_blocks == _interleaved(found.units, 2), layer.name
        assert fresh.layers[layer.name].clone_blocks == [], layer.name
    if arch == "vit":
        assert d.layers["blocks.0.attn.heads"].clone_blocks == [[0, 1], [2, 3]]
    assert d.manifold.state == "block-constant" and d.manifold.distance == 0.0
    assert fresh.manifold.state == "no clones" and fresh.stability is None
    dims = d.manifold.dimensions
    assert dims["parameters"] == sum(p.numel() for p in clone.parameters())
    assert dims["block_constant"] == sum(p.numel() for p in base.parameters())
    assert d.stability.verdict in {"stable", "unstable", "saddle", "degenerate"}
    json.loads(d.to_json())
    assert "block-constant" in d.to_markdown()


def test_after_an_equitable_perturbation_the_partition_is_found_and_reported_equitable():
    base = _base("mlp").double().eval()
    clone = expand(base, 2).eval()
    moved = equitable_perturbation(clone, 0.05, torch.Generator().manual_seed(3)).eval()
    x, y = _batch(SMALL["mlp"]["in_shape"], dtype=F64)
    d = diagnose(moved, x, y, F.cross_entropy, stability=False)
    for layer in clone.declared_layers():
        assert d.layers[layer.name].clone_blocks == _interleaved(d.layers[layer.name].units, 2)
    m = d.manifold
    assert m.state == "equitable"
    assert m.distance > 1e-3 and m.distance == pytest.approx(m.redistribution, rel=1e-12)
    assert m.incoming < 1e-12 and m.outgoing < 1e-12


def test_a_non_equitable_move_is_reported_off_the_manifold_and_breaks_the_clones():
    clone = expand(_base("mlp").double(), 2).eval()
    with torch.no_grad():
        clone.blocks[0].linear.weight[0, 0] += 0.1  # unit 0 leaves its block
    x, y = _batch(SMALL["mlp"]["in_shape"], dtype=F64)
    d = diagnose(clone, x, y, F.cross_entropy, stability=False)
    first = d.layers[clone.declared_layers()[0].name].clone_blocks
    assert [0, 1] not in first and [2, 3] in first


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_planted_frozen_units_are_found_exactly(activation):
    model = _base("mlp", activation=activation, norm="none").eval()
    x, y = _batch(SMALL["mlp"]["in_shape"], n=64)
    first = model.declared_layers()[0].name
    assert diagnose(model, x, y, F.cross_entropy, stability=False).layers[first].frozen_units == []
    planted = [1, 3]
    with torch.no_grad():
        linear = model.blocks[0].linear
        if activation == "relu":
            linear.bias[planted] = -1e3  # dead on every input
        else:
            linear.weight[planted] *= 1e4  # saturated except where w.x ~ 0
    fraction = 1.0 if activation == "relu" else 0.9
    d = diagnose(model, x, y, F.cross_entropy, frozen_fraction=fraction, stability=False)
    assert d.layers[first].frozen_units == planted
    if activation == "relu":
        assert d.layers[first].dead_units == planted


class ResidualMLP(nn.Module):
    """A user-defined model: no declared_layers, a skip connection, a planted clone pair."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.mix = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
        self.act = nn.GELU()
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(self.act(h + self.mix(h)))


def _planted_residual_mlp():
    model = ResidualMLP().double()
    with torch.no_grad():  # units 4 and 5 of every 6-wide interface are clones
        for lin in (model.inp, model.mix[0], model.mix[2]):
            lin.weight[5] = lin.weight[4]
            lin.bias[5] = lin.bias[4]
        for lin in (model.mix[0], model.mix[2], model.out):
            lin.weight[:, 4] = lin.weight[:, 4] / 2
            lin.weight[:, 5] = lin.weight[:, 4]
    return model


def test_a_user_defined_residual_mlp_is_diagnosed_without_declarations():
    model = _planted_residual_mlp()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 5, generator=g, dtype=F64), torch.randint(0, 3, (20,), generator=g)
    d = diagnose(model, x, y, F.cross_entropy, lanczos_steps=20)
    assert list(d.layers) == ["inp", "mix.0", "mix.1", "mix.2", "act", "out"]
    for name in ("inp", "mix.0", "mix.1", "mix.2", "act"):
        assert d.layers[name].clone_blocks == [[4, 5]], name
    assert d.layers["out"].clone_blocks == []
    assert d.manifold.state == "block-constant"
    assert d.stability is not None and d.stability.reduced_dimension > 0
    fresh = diagnose(ResidualMLP().double(), x, y, F.cross_entropy)
    assert all(layer.clone_blocks == [] for layer in fresh.layers.values())
    by_type = diagnose(model, x, y, F.cross_entropy, layers=[nn.Tanh, "act"], stability=False)
    assert list(by_type.layers) == ["mix.1", "act"]


class Readout(nn.Module):
    """tanh units read by a fixed (buffer) readout: the normal space is the hidden layer's alone."""

    def __init__(self, weight, bias, readout):
        super().__init__()
        self.hidden = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            self.hidden.weight.copy_(weight)
            self.hidden.bias.copy_(bias)
        self.act = nn.Tanh()
        self.register_buffer("readout", readout)

    def forward(self, x):
        return self.act(self.hidden(x)) @ self.readout


def _readout_case(offset):
    """Clones of two positive-input tanh units; targets `offset` above (or below) the output.

    On the manifold the normal Hessian is sum_x r(x) a tanh''(z) (x x^T per block), r the MSE
    residual: tanh'' < 0 for z > 0 and a > 0, so r < 0 (targets above) is stable, r > 0 unstable.
    """
    g = torch.Generator().manual_seed(4)
    x = torch.rand(30, 3, generator=g, dtype=F64) + 0.1
    w = torch.rand(2, 3, generator=g, dtype=F64) + 0.2
    weight, bias = w.repeat_interleave(2, dim=0), torch.full((4,), 0.1, dtype=F64)
    model = Readout(weight, bias, torch.full((4, 1), 0.5, dtype=F64))
    with torch.no_grad():
        y = model(x) + offset
    return model, x, y


def _dense_verdict(model, x, y):
    """The verdict from the dense Hessian on an independent normal basis of the hidden layer."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def loss(flat):
        parts = dict(zip(names, (t.view_as(p) for t, p in zip(flat.split(sizes), params))))
        out = torch.func.functional_call(model, {**parts, "readout": model.readout}, (x,))
        return F.mse_loss(out, y)

    h = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    basis = []
    for block in ([0, 1], [2, 3]):  # weight rows (4 x 3) then bias (4)
        for col in range(3):
            v = torch.zeros(4, 3, dtype=F64)
            v[block[0], col], v[block[1], col] = 1.0, -1.0
            basis.append(torch.cat([v.reshape(-1), torch.zeros(4, dtype=F64)]))
        b = torch.zeros(4, dtype=F64)
        b[block[0]], b[block[1]] = 1.0, -1.0
        basis.append(torch.cat([torch.zeros(12, dtype=F64), b]))
    q, _ = torch.linalg.qr(torch.stack(basis, 1))
    return torch.linalg.eigvalsh(q.T @ h @ q)


@pytest.mark.parametrize("offset, expected", [(0.3, "stable"), (-0.3, "unstable")])
def test_the_verdict_agrees_with_a_dense_float64_hessian(offset, expected):
    model, x, y = _readout_case(offset)
    dense = _dense_verdict(model, x, y)
    d = diagnose(model, x, y, F.mse_loss, lanczos_steps=8)
    assert d.layers["hidden"].clone_blocks == [[0, 1], [2, 3]]
    assert d.stability.reduced_dimension == 8
    assert d.stability.verdict == expected
    assert (float(dense[0]) > 0) == (expected == "stable")
    assert (float(dense[-1]) < 0) == (expected == "unstable")
    assert d.stability.lambda_min == pytest.approx(float(dense[0]), abs=1e-10)
    assert d.stability.lambda_max == pytest.approx(float(dense[-1]), abs=1e-10)


def test_diagnose_leaves_the_model_as_it_was():
    model = expand(_base("cnn", norm="batch"), 2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch(SMALL["cnn"]["in_shape"])
    diagnose(model, x, y, F.cross_entropy, mode="train", lanczos_steps=3)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_options_fail_before_any_work_and_list_the_valid_values():
    model = _base("mlp")
    x, y = _batch(SMALL["mlp"]["in_shape"])
    with pytest.raises(ValueError, match="valid: eval, train"):
        diagnose(model, x, y, F.cross_entropy, mode="test")
    with pytest.raises(ValueError, match="no module at path"):
        diagnose(model, x, y, F.cross_entropy, layers=["nope"])


def test_the_figure_draws_the_unit_counts():
    clone = expand(_base("mlp"), 2).eval()
    x, y = _batch(SMALL["mlp"]["in_shape"])
    d = diagnose(clone, x, y, F.cross_entropy, lanczos_steps=5)
    fig = d.figure()
    bars = fig.axes[0].patches
    n = len(d.layers)
    cloned = [p.get_width() for p in bars[n : 2 * n]]
    assert cloned == [float(layer.cloned_units) for layer in d.layers.values()]
    ritz = fig.axes[1].lines[0].get_ydata()
    assert list(ritz) == pytest.approx(d.stability.ritz_values)


def test_equal_forward_values_with_different_errors_are_not_clones():
    """Moving the output weights of a clone pair apart keeps their forward values identical (the
    head is not upstream of them) but not their back-propagated errors. (The same change on every
    logit's row would be the softmax shift, which leaves the errors equal too.)"""
    clone = expand(_base("mlp").double(), 2).eval()
    with torch.no_grad():
        clone.head.weight[0, 0] += 0.1
        clone.head.weight[0, 1] -= 0.1
    x, y = _batch(SMALL["mlp"]["in_shape"], dtype=F64)
    d = diagnose(clone, x, y, F.cross_entropy, stability=False)
    first, last = (d.layers[layer.name] for layer in clone.declared_layers())
    assert [0, 1] not in last.clone_blocks and [2, 3] in last.clone_blocks
    assert [0, 1] in first.clone_blocks  # equal outgoing sums below: their errors still agree
    assert d.manifold.state == "block-constant"  # on the manifold of the smaller partition


def test_the_manifold_state_of_the_planted_partition_after_an_outgoing_only_move():
    """Against the planted partition, a head-column move breaks only the outgoing sums: off."""
    from core.diagnose.diagnosis import _manifold
    from core.theory import CloneStructure

    clone = expand(_base("mlp").double(), 2).eval()
    with torch.no_grad():
        clone.head.weight[0, 0] += 0.1
        clone.head.weight[0, 1] -= 0.1
    params = {k: p.detach() for k, p in clone.named_parameters()}
    m = _manifold(CloneStructure.of_clone(clone), params, 1e-8)
    assert m.state == "off"
    assert m.outgoing == pytest.approx(0.1 * math.sqrt(2), rel=1e-12) and m.incoming == 0.0


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_pre_head_features_are_a_measurable_layer(arch):
    clone = expand(_base(arch), 2).eval()
    x, y = _batch(SMALL[arch]["in_shape"])
    d = diagnose(clone, x, y, F.cross_entropy, layers=["head:input"], stability=False)
    features = d.layers["head:input"]
    assert features.units == clone.head.in_features
    assert features.clone_blocks == _interleaved(features.units, 2)


def test_the_probe_measures_any_module_by_path_or_type():
    from core.metrics import Probe

    model = ResidualMLP()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    probe = Probe(model, x, y, F.cross_entropy, generator=g)
    assert [layer.name for layer in probe.layers] == [
        "inp",
        "mix.0",
        "mix.1",
        "mix.2",
        "act",
        "out",
    ]
    record = Probe(model, x, y, F.cross_entropy, generator=g, layers=[nn.GELU])()
    assert any(k.startswith("act/") for k in record) and not any(
        k.startswith("inp/") for k in record
    )
