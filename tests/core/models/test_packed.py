"""`PackedModel` against the N single models it packs (float64, CPU): the same logits, the same
parameter gradients, the same BatchNorm running statistics and dropout masks (each member's from
a generator seeded as the single model's global RNG), and an optimizer over the stacked
parameters whose per-member state is the single optimizer's. Equal up to rounding: a batched
matmul and a single one may round differently in the last bit (here the 9 -> 5 head)."""

from __future__ import annotations

import pytest
import torch

from core.models import ModelConfig, build_model
from core.models.packed import PackedModel, member_optimizer_state

N, B = 3, 7
TOL = 1e-12
ARCHS = {
    "mlp": {"hidden_sizes": (10, 9)},
    "cnn": {"conv_channels": (4, 6), "fc_hidden": (8,)},
}


@pytest.fixture(autouse=True)
def float64():
    """float64 models; one thread (tiny tensors run faster, and a shared CPU stays usable)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def _models(arch, **kwargs):
    cfg = ModelConfig(arch=arch, in_shape=(3, 8, 8), num_classes=5, **ARCHS[arch], **kwargs)
    return [build_model(cfg, seed=s) for s in range(N)]


def _close(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=lambda m: f"{what}: {m}")


def _packed(models):
    return PackedModel(models, [torch.Generator().manual_seed(100 + k) for k in range(N)])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("after", [False, True])
def test_packed_forward_and_backward_are_the_single_models(arch, norm, after):
    models = _models(arch, norm=norm, norm_after_activation=after, dropout=0.3)
    packed = _packed(models)
    x = torch.randn(N, B, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.randn(N, B, 5, generator=torch.Generator().manual_seed(1))
    out = packed(x)
    ((out - target) ** 2).sum().backward()
    for k, model in enumerate(models):
        torch.manual_seed(100 + k)  # the single model's dropout draws from the global RNG
        single = model(x[k])
        ((single - target[k]) ** 2).sum().backward()
        _close(out[k], single)
        grads = dict(packed.body.named_parameters())
        for name, p in model.named_parameters():
            _close(grads[name].grad[k], p.grad, name)
        state = packed.member_state_dict(k)  # running statistics updated by the forward
        assert state.keys() == model.state_dict().keys()
        for name, value in model.state_dict().items():
            _close(state[name], value, name)


def test_dropout_masks_differ_between_members_and_follow_their_generators():
    models = _models("mlp", norm="none", dropout=0.5)
    packed = _packed(models)
    x = torch.ones(N, B, 3, 8, 8)
    out = packed(x)
    assert not torch.equal(out[0], out[1])  # member k's mask is its own
    packed.eval()  # no dropout in eval mode: each member is its single model's eval forward
    for k, model in enumerate(models):
        _close(packed(x)[k], model.eval()(x[k]))


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    ],
)
def test_optimizer_over_stacked_parameters_steps_each_member_as_its_own(make):
    models = _models("cnn", norm="batch", dropout=0.0)
    packed = _packed(models)
    optimizer = make(packed.parameters())
    singles = [make(m.parameters()) for m in models]
    x = torch.randn(N, B, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        optimizer.zero_grad()
        packed(x).square().sum().backward()
        optimizer.step()
        for k, (model, single) in enumerate(zip(models, singles)):
            single.zero_grad()
            model(x[k]).square().sum().backward()
            single.step()
    for k, (model, single) in enumerate(zip(models, singles)):
        for name, value in model.state_dict().items():
            _close(packed.member_state_dict(k)[name], value, name)
        share = member_optimizer_state(packed, optimizer.state_dict(), k)
        expected = single.state_dict()
        assert share["param_groups"] == expected["param_groups"]
        for i, entry in expected["state"].items():
            for key, value in entry.items():
                _close(share["state"][i][key], value, f"{i} {key}")


def test_what_cannot_be_packed_is_refused():
    cfg = ModelConfig(arch="resnet", in_shape=(3, 8, 8), num_classes=5)
    with pytest.raises(ValueError, match="arch 'resnet'; valid: mlp, cnn"):
        PackedModel([build_model(cfg, seed=0)])
    models = _models("mlp", dropout=0.2)
    with pytest.raises(ValueError, match="one dropout generator per member"):
        PackedModel(models)
    other = build_model(ModelConfig(arch="mlp", in_shape=(3, 8, 8), num_classes=4), seed=0)
    with pytest.raises(ValueError, match="same ModelConfig"):
        PackedModel([models[0], other], [torch.Generator()] * 2)
