"""Hessian-vector products, Lanczos on the normal Hessian of a cloned model, the Def. A.2 verdict
and the escape rate (paper App. A.5, paper_spec §8.6)."""

import math

import pytest
import torch

from core.cloning import expand, manifold_distance, normal_component
from core.models import ModelConfig, build_model
from core.theory import (
    escape_rate,
    hessian_vector_product,
    lanczos,
    model_loss,
    normal_hessian_spectrum,
    predicted_rate,
    verdict,
)

F64 = torch.float64


def _tiny_clone(activation="tanh", norm="none"):
    cfg = ModelConfig(
        arch="mlp",
        in_shape=(4,),
        num_classes=3,
        hidden_sizes=(3, 3),
        norm=norm,
        dropout=0.0,
        activation=activation,
    )
    return expand(build_model(cfg, seed=0).to(F64), 2).eval()


def _batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflat(vector, like):
    out, i = {}, 0
    for name, t in like.items():
        out[name] = vector[i : i + t.numel()].view_as(t)
        i += t.numel()
    return out


def _dense_normal_hessian(model, loss_fn):
    """(H, Q): the dense Hessian and an orthonormal basis of the normal space, built by hand."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    flat = _flat(params)
    hessian = torch.autograd.functional.hessian(lambda v: loss_fn(_unflat(v, params)), flat)
    eye = torch.eye(flat.numel(), dtype=F64)
    projector = torch.stack([_flat(normal_component(model, _unflat(e, params))) for e in eye], 1)
    assert torch.allclose(projector, projector.T) and torch.allclose(
        projector @ projector, projector
    )
    values, vectors = torch.linalg.eigh(projector)
    return hessian, vectors[:, values > 0.5]


@pytest.mark.parametrize("activation, norm", [("tanh", "none"), ("relu", "batch")])
def test_lanczos_matches_dense_eigvalsh_of_the_projected_hessian(activation, norm):
    model = _tiny_clone(activation, norm)
    loss_fn = model_loss(model, *_batch())
    hessian, basis = _dense_normal_hessian(model, loss_fn)
    dense = torch.linalg.eigvalsh(basis.T @ hessian @ basis)
    spectrum = normal_hessian_spectrum(
        model, loss_fn, steps=basis.shape[1], generator=torch.Generator().manual_seed(0)
    )
    assert spectrum.lambda_min == pytest.approx(float(dense[0]), abs=1e-6)
    assert spectrum.lambda_max == pytest.approx(float(dense[-1]), abs=1e-6)
    ritz = spectrum.ritz_values
    # every Ritz value is an eigenvalue, and every distinct eigenvalue is found (a Krylov space
    # holds one vector per distinct eigenvalue, so repeated ones appear once)
    gaps = (ritz[:, None] - dense[None, :]).abs()
    assert float(gaps.min(dim=1).values.max()) < 1e-6
    assert float(gaps.min(dim=0).values.max()) < 1e-6
    assert spectrum.verdict == "saddle"
    # the Ritz vectors are unit normal eigenvectors
    v = _flat(spectrum.min_direction)
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-10)
    assert float((basis @ (basis.T @ v) - v).norm()) < 1e-10
    assert float((hessian @ v - spectrum.lambda_min * v) @ v) == pytest.approx(0.0, abs=1e-8)


def test_hessian_vector_product_matches_the_dense_hessian():
    model = _tiny_clone()
    loss_fn = model_loss(model, *_batch())
    params = {k: p.detach() for k, p in model.named_parameters()}
    hessian = torch.autograd.functional.hessian(
        lambda v: loss_fn(_unflat(v, params)), _flat(params)
    )
    v = torch.randn(hessian.shape[0], generator=torch.Generator().manual_seed(5), dtype=F64)
    hv = _flat(hessian_vector_product(loss_fn, params, _unflat(v, params)))
    assert torch.allclose(hv, hessian @ v, atol=1e-12)


def test_lanczos_on_a_known_spectrum_stops_at_the_invariant_subspace():
    values = torch.tensor([-2.0, -2.0, 0.5, 1.0, 3.0, 3.0, 3.0], dtype=F64)
    rotation, _ = torch.linalg.qr(
        torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    )
    matrix = rotation @ torch.diag(values) @ rotation.T
    start = torch.ones(7, dtype=F64)
    ritz, vectors = lanczos(lambda v: matrix @ v, start, steps=7)
    assert ritz == pytest.approx(torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=F64), abs=1e-10)
    assert torch.allclose(matrix @ vectors, vectors * ritz, atol=1e-10)


def test_verdict_follows_definition_a2():
    assert verdict(0.1, 2.0, 1e-6) == "stable"
    assert verdict(-2.0, -0.1, 1e-6) == "unstable"
    assert verdict(-0.1, 2.0, 1e-6) == "saddle"
    assert verdict(0.0, 2.0, 1e-6) == "degenerate"
    assert verdict(-1.0, 1e-9, 1e-6) == "degenerate"


def _quadratic(curvature):
    """Loss 1/2 sum_k c_k ||theta_k||^2 with one curvature per parameter tensor: on the cloning
    manifold its gradient is block-constant, and its normal Hessian has eigenvalues {c_k}."""

    def loss_fn_of(module):
        def loss_fn(params):
            return sum(0.5 * curvature[k] * p.pow(2).sum() for k, p in params.items())

        return loss_fn

    return loss_fn_of


@pytest.mark.parametrize(
    "signs, expected", [((1, 1), "stable"), ((-1, -1), "unstable"), ((1, -1), "saddle")]
)
def test_verdicts_of_a_quadratic_loss(signs, expected):
    model = _tiny_clone()
    hidden = "blocks.1.linear.weight"  # one curvature on the hidden->hidden weights, one elsewhere
    curvature = {
        k: 0.5 * signs[0] if k == hidden else 2.0 * signs[1] for k, _ in model.named_parameters()
    }
    loss_fn = _quadratic(curvature)(model)
    spectrum = normal_hessian_spectrum(model, loss_fn, 30, torch.Generator().manual_seed(0))
    assert spectrum.verdict == expected
    assert spectrum.lambda_min == pytest.approx(min(0.5 * signs[0], 2.0 * signs[1]), abs=1e-10)
    assert spectrum.lambda_max == pytest.approx(max(0.5 * signs[0], 2.0 * signs[1]), abs=1e-10)


def test_escape_rate_is_exact_for_a_quadratic_loss():
    """Normal deviation in one tensor of curvature c: d_t = eps |1 - lr c|^t exactly."""
    model = _tiny_clone()
    assert manifold_distance(model) == 0.0
    target = "blocks.1.linear.weight"
    curvature = {k: 1.0 for k, _ in model.named_parameters()}
    curvature[target] = -0.5
    g = torch.Generator().manual_seed(2)
    direction = {
        k: torch.randn(p.shape, generator=g, dtype=F64) * (k == target)
        for k, p in model.named_parameters()
    }
    lr = 0.1
    esc = escape_rate(model, _quadratic(curvature), 1e-3, 20, lr, g, direction, fit_from=0)
    assert esc.distances[0] == pytest.approx(1e-3, rel=1e-12)
    assert esc.rate == pytest.approx(math.log(1 + lr * 0.5), abs=1e-12)
    assert esc.rate == pytest.approx(
        predicted_rate(torch.tensor([-0.5, 1.0], dtype=F64), lr), abs=1e-12
    )
    assert manifold_distance(model) == 0.0  # the model itself is untouched


def test_escape_along_the_softest_direction_of_an_mlp_follows_lambda_min():
    """To first order d_{t+1} = (I - lr P H P) d_t; over a short horizon H barely moves."""
    model = _tiny_clone()
    x, y = _batch()
    spectrum = normal_hessian_spectrum(
        model, model_loss(model, x, y), 54, torch.Generator().manual_seed(0)
    )
    assert spectrum.lambda_min < 0
    lr = 0.05
    esc = escape_rate(
        model,
        lambda m: model_loss(m, x, y),
        1e-7,
        20,
        lr,
        torch.Generator().manual_seed(1),
        direction=spectrum.min_direction,
        fit_from=0,
    )
    assert esc.rate == pytest.approx(math.log(1 - lr * spectrum.lambda_min), rel=0.1)


def test_a_model_that_is_not_a_clone_has_no_normal_space():
    cfg = ModelConfig(arch="mlp", in_shape=(4,), num_classes=3, hidden_sizes=(3,), norm="none")
    model = build_model(cfg, seed=0).to(F64)
    with pytest.raises(ValueError, match="not a clone"):
        normal_hessian_spectrum(
            model, model_loss(model, *_batch()), 5, torch.Generator().manual_seed(0)
        )
