"""The probe: what it hooks, in which mode, with which gradients, and what clones look like."""

import pytest
import torch
import torch.nn.functional as F

import core.metrics
from core.cloning import expand
from core.metrics import Probe, ProbeSpec, effective_rank, saturated_fraction
from core.models import ModelConfig, build_model
from core.models.capture import unit_matrix

SMALL = {
    "mlp": {"hidden_sizes": (12, 10)},
    "cnn": {"conv_channels": (4, 6), "fc_hidden": (8,)},
    "resnet": {"base_channels": 4, "stage_blocks": (1, 1)},
    "vit": {"embed_dim": 8, "n_heads": 2, "depth": 1, "patch_size": 4},
}


# metrics of the default preset that read every row, with the public functions' defaults
FULL_ROW = (
    "dead_fraction",
    "dormant_ratio",
    "duplicate_fraction",
    "duplicate_fraction_cosine",
    "mean_of_means",
    "std_of_means",
    "mean_of_stds",
    "std_of_stds",
)


def _model(arch, seed=0, **kw):
    cfg = ModelConfig(arch=arch, in_shape=(3, 8, 8), num_classes=3, **{**SMALL[arch], **kw})
    return build_model(cfg, seed=seed).double()


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def _probe(model, x, y, spec=None, seed=0):
    return Probe(model, x, y, F.cross_entropy, spec, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "vit"])
def test_a_clone_is_all_duplicates(arch):
    base = _model(arch, activation="tanh" if arch in ("mlp", "cnn") else None, dropout=0.0)
    x, y = _batch(48)
    spec = ProbeSpec(metrics=("duplicate_fraction", "duplicate_fraction_cosine"))
    on_base = _probe(base, x, y, spec)()
    on_clone = _probe(expand(base, 2), x, y, spec)()
    assert on_clone["loss"] == pytest.approx(on_base["loss"], rel=1e-9)
    for layer in base.declared_layers():
        assert on_base[f"{layer.name}/duplicate_fraction"] < 0.5
        assert on_clone[f"{layer.name}/duplicate_fraction"] == 1.0, layer.name
        # The paper's one-sided cosine: every first clone counts, a second clone 2k+1 counts iff
        # base unit k has a similar later unit, so the clone scores (1 + base) / 2, never 1.
        cosine = f"{layer.name}/duplicate_fraction_cosine"
        assert on_clone[cosine] == pytest.approx((1 + on_base[cosine]) / 2, abs=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_a_clone_has_the_dead_fraction_of_its_base(arch):
    base = _model(arch, dropout=0.0)
    first = base.declared_layers()[0]
    with torch.no_grad():  # kill units 0 and 2 of the first layer: BN shift far below zero
        first.norm.bias[[0, 2]] = -1e3
    x, y = _batch(48)
    spec = ProbeSpec(metrics=("dead_fraction", "dormant_ratio"))
    on_base, on_clone = _probe(base, x, y, spec)(), _probe(expand(base, 3), x, y, spec)()
    assert on_base[f"{first.name}/dead_fraction"] >= 2 / first.incoming.weight.shape[0]
    for layer in base.declared_layers():
        for metric in ("dead_fraction", "dormant_ratio"):
            key = f"{layer.name}/{metric}"
            assert on_clone[key] == on_base[key], key


def test_saturated_fraction_does_not_depend_on_the_probe_size():
    model = _model("mlp", dropout=0.0)
    with torch.no_grad():
        model.head.weight[:, :4] = 0.0  # units 0-3 of the last hidden layer feed nothing
    x, y = _batch(100)
    spec = ProbeSpec(metrics=("saturated_fraction",))
    small = _probe(model, x, y, spec)()
    large = _probe(model, x.repeat(10, 1, 1, 1), y.repeat(10), spec)()  # the same 100, x10
    assert small["hidden2/saturated_fraction"] == pytest.approx(4 / 10)
    assert small == pytest.approx(large, rel=1e-9)


def test_probe_runs_in_eval_mode_and_leaves_the_model_as_it_was():
    model = _model("mlp", dropout=0.5)
    model.train()
    model.blocks[0].norm.eval()  # a mixed-mode model: restored module by module
    x, y = _batch(32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    probe = _probe(model, x, y)
    first, second = probe(), probe()
    assert first == second  # eval mode: no dropout, BN on running statistics
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert first["loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-12)
    assert first["accuracy"] == pytest.approx((out.argmax(1) == y).double().mean().item())


def test_probe_measures_the_declared_layers_and_their_gradients():
    model = _model("cnn", dropout=0.0)
    x, y = _batch(6)
    acts, grads = {}, {}
    hooks = [
        layer.module.register_forward_hook(
            lambda _m, _i, out, name=layer.name: acts.__setitem__(name, out)
        )
        for layer in model.declared_layers()
    ]
    loss = F.cross_entropy(model.eval()(x), y)
    for hook in hooks:
        hook.remove()
    names = list(acts)
    grads = dict(zip(names, torch.autograd.grad(loss, [acts[n] for n in names])))
    result = _probe(model, x, y)()
    layer_keys = {k.split("/")[0] for k in result if "/" in k}
    assert layer_keys == {"conv1", "conv2", "fc1"} == set(names)
    assert {k for k in result if "/" not in k} == {"loss", "accuracy"}
    for name in names:
        h, g = unit_matrix(acts[name].detach()), unit_matrix(grads[name]) * len(x)
        assert result[f"{name}/effective_rank"] == pytest.approx(effective_rank(h), rel=1e-9)
        assert result[f"{name}/saturated_fraction"] == saturated_fraction(h, g)
        for metric in FULL_ROW:  # shared per-layer statistics == the public functions
            expected = getattr(core.metrics, metric)(h)
            assert result[f"{name}/{metric}"] == pytest.approx(expected, rel=1e-12), metric
    assert result["conv1/mean_weight_magnitude"] == pytest.approx(
        model.declared_layers()[0].incoming.weight.abs().mean().item()
    )


def test_flattening_rule():
    conv = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)  # (B, C, H, W)
    h = unit_matrix(conv)
    assert h.shape == (8, 3)  # rows: image x position, columns: channels
    assert h[5].tolist() == conv[1, :, 0, 1].tolist()  # image 1, position (0, 1)
    tokens = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)  # (B, T, D)
    assert unit_matrix(tokens)[6].tolist() == tokens[1, 2].tolist()  # image 1, token 2


def test_row_subsample_is_fixed_and_follows_the_generator():
    model = _model("cnn", dropout=0.0)
    x, y = _batch(20)  # conv1 has 20 * 64 = 1280 rows: the ranks subsample 1024 of them
    spec = ProbeSpec(metrics=("effective_rank", "participation_ratio"))
    probe = _probe(model, x, y, spec, seed=1)
    first = probe()
    assert probe() == first  # the same rows at every call
    assert _probe(model, x, y, spec, seed=1)() == first  # the same generator seed, same rows
    other = _probe(model, x, y, spec, seed=2)()
    assert other["conv1/effective_rank"] != first["conv1/effective_rank"]
    assert other["fc1/effective_rank"] == first["fc1/effective_rank"]  # 20 rows: no subsample


def test_loss_fn_may_report_its_own_scalars():
    model = _model("mlp", dropout=0.0)
    x, y = _batch(16)

    def masked(out, y):
        logits = out[:, :2]  # a "task" of classes 0 and 1
        return {"loss": F.cross_entropy(logits, y.clamp_max(1)), "acc": torch.tensor(0.25)}

    spec = ProbeSpec(metrics=("dead_fraction",))
    result = Probe(model, x, y, masked, spec, generator=torch.Generator())()
    assert {k for k in result if "/" not in k} == {"loss", "acc"}
    assert result["acc"] == 0.25


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="valid: default, paper, paper_bitflip, dohare2024"):
        ProbeSpec(preset="papers")
    with pytest.raises(ValueError, match="valid: dead_fraction, frozen_fraction, duplicate_"):
        ProbeSpec(preset="paper", metrics=("stable_rank",))
    assert ProbeSpec(metrics="dead_fraction, effective_rank").metrics == (
        "dead_fraction",
        "effective_rank",
    )
