"""Hessian-vector products, Lanczos on the reduced normal Hessian of a cloned model, the Def. A.2
verdict and the escape rate (paper Def. A.2, App. A.5), against dense float64 Hessians whose normal
space is built here from the units' activations, independently of the code under test."""

import math

import pytest
import torch
from torch import nn

from core.cloning import expand, manifold_distance
from core.models import ModelConfig, build_model
from core.theory import CloneStructure, stability

F64 = torch.float64


def _tiny_clone(activation="tanh", norm="none", hidden=(3, 3)):
    cfg = ModelConfig(
        arch="mlp",
        in_shape=(4,),
        num_classes=3,
        hidden_sizes=hidden,
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


def _groups(values):
    """Labels of the columns of `values` (samples, units): equal labels = identical activations."""
    seen, labels = {}, []
    for column in values.T:
        labels.append(seen.setdefault(tuple(column.tolist()), len(seen)))
    return labels


def _unit_labels(model, x):
    """Per MLP interface, the groups of units with identical pre-activations on the batch."""
    pre = []
    hooks = [b.linear.register_forward_hook(lambda m, i, o: pre.append(o)) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [_groups(p) for p in pre]


def _members(labels):
    blocks = {}
    for unit, label in enumerate(labels):
        blocks.setdefault(label, []).append(unit)
    return list(blocks.values())


def _independent_spaces(model, x):
    """(normal basis, symmetry basis) as orthonormal columns, from the units' activations.

    Weight (out, in) of block l: rows grouped by the units of layer l, columns by layer l - 1
    (inputs separate); biases and norm parameters by layer l; the head's rows separate. Tangent
    vectors: block indicators. Symmetries: zero row- and column-sum matrices on hidden-to-hidden
    block pairs, and one zero-sum row vector repeated on every row of the head.
    """
    params = {k: p.detach() for k, p in model.named_parameters()}
    hidden = _unit_labels(model, x)
    n_in, n_out = x.shape[1], params["head.weight"].shape[0]
    rows_cols = {}
    for i, labels in enumerate(hidden):
        before = list(range(n_in)) if i == 0 else hidden[i - 1]
        rows_cols[f"blocks.{i}.linear.weight"] = (labels, before)
        for name in params:
            if name.startswith(f"blocks.{i}.") and name != f"blocks.{i}.linear.weight":
                rows_cols[name] = (labels, None)
    rows_cols["head.weight"] = (list(range(n_out)), hidden[-1])
    rows_cols["head.bias"] = (list(range(n_out)), None)
    offsets, start = {}, 0
    for name, t in params.items():
        offsets[name] = start
        start += t.numel()
    total = start
    tangent, symmetric = [], []
    for name, (rows, cols) in rows_cols.items():
        t = params[name]
        for r_block in _members(rows):
            for c_block in _members(cols) if cols is not None else [None]:
                v = torch.zeros(t.shape, dtype=F64)
                if c_block is None:
                    v[r_block] = 1.0
                else:
                    v[torch.tensor(r_block)[:, None], torch.tensor(c_block)[None, :]] = 1.0
                tangent.append((name, v))
                both = c_block is not None and len(r_block) > 1 and len(c_block) > 1
                if both and name != "head.weight":
                    for a in r_block[1:]:
                        for b in c_block[1:]:
                            s = torch.zeros(t.shape, dtype=F64)
                            s[r_block[0], c_block[0]], s[a, b] = 1.0, 1.0
                            s[r_block[0], b], s[a, c_block[0]] = -1.0, -1.0
                            symmetric.append((name, s))
        if name == "head.weight":
            for c_block in _members(cols):
                for b in c_block[1:]:
                    s = torch.zeros(t.shape, dtype=F64)
                    s[:, c_block[0]], s[:, b] = 1.0, -1.0
                    symmetric.append((name, s))

    def embed(pairs):
        out = torch.zeros(total, len(pairs), dtype=F64)
        for j, (name, v) in enumerate(pairs):
            out[offsets[name] : offsets[name] + v.numel(), j] = v.reshape(-1)
        return out

    tangent_basis, _ = torch.linalg.qr(embed(tangent))
    values, vectors = torch.linalg.eigh(
        torch.eye(total, dtype=F64) - tangent_basis @ tangent_basis.T
    )
    normal = vectors[:, values > 0.5]
    symmetry, _ = torch.linalg.qr(embed(symmetric))
    return normal, symmetry


def _dense(model, loss_fn):
    params = {k: p.detach() for k, p in model.named_parameters()}
    return torch.autograd.functional.hessian(lambda v: loss_fn(_unflat(v, params)), _flat(params))


def _reduced(normal, symmetry, hessian):
    """Orthonormal basis of N minus the symmetry directions that are null for this Hessian."""
    null = float((hessian @ symmetry).norm()) <= 1e-8 * float(hessian.norm())
    if not null:
        return normal
    rest = normal - symmetry @ (symmetry.T @ normal)
    u, s, _ = torch.linalg.svd(rest, full_matrices=False)
    return u[:, s > 1e-8]


def _lanczos_on(model, loss_fn, steps):
    return stability.normal_hessian_spectrum(
        model, loss_fn, steps, torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize("activation, norm", [("tanh", "none"), ("relu", "batch")])
def test_lanczos_matches_the_dense_reduced_normal_hessian(activation, norm):
    model = _tiny_clone(activation, norm)
    x, y = _batch()
    loss_fn = stability.model_loss(model, x, y)
    hessian = _dense(model, loss_fn)
    normal, symmetry = _independent_spaces(model, x)
    # the symmetry directions are exact zero modes of the cross-entropy Hessian
    assert float((hessian @ symmetry).norm()) < 1e-10 * float(hessian.norm())
    basis = _reduced(normal, symmetry, hessian)
    dense = torch.linalg.eigvalsh(basis.T @ hessian @ basis)
    spectrum = _lanczos_on(model, loss_fn, basis.shape[1])
    assert spectrum.removed == ("equitable", "softmax_shift")
    dims = spectrum.dimensions
    assert dims["normal"] == normal.shape[1]
    assert dims["equitable"] + dims["softmax_shift"] == symmetry.shape[1]
    assert spectrum.reduced_dimension == basis.shape[1]
    assert spectrum.lambda_min == pytest.approx(float(dense[0]), abs=1e-8)
    assert spectrum.lambda_max == pytest.approx(float(dense[-1]), abs=1e-8)
    gaps = (spectrum.ritz_values[:, None] - dense[None, :]).abs()
    assert float(gaps.min(dim=1).values.max()) < 1e-7  # every Ritz value is an eigenvalue
    assert float(spectrum.residuals.max()) < 1e-7
    tol = 1e-6 * float(dense.abs().max())
    assert spectrum.verdict == stability.verdict(float(dense[0]), float(dense[-1]), tol)
    v = _flat(spectrum.min_direction)
    assert float((basis @ (basis.T @ v) - v).norm()) < 1e-10  # a unit vector of N'
    assert float((hessian @ v - spectrum.lambda_min * v).norm()) < 1e-6


def test_relu_normal_spectrum_is_symmetric_and_a_saddle():
    """ReLU without normalisation: H|N couples only adjacent layers, so its spectrum is +-."""
    model = _tiny_clone("relu", "none", hidden=(3, 3, 3))
    x, y = _batch()
    loss_fn = stability.model_loss(model, x, y)
    hessian = _dense(model, loss_fn)
    normal, symmetry = _independent_spaces(model, x)
    dense = torch.linalg.eigvalsh(normal.T @ hessian @ normal)
    assert torch.allclose(dense, -dense.flip(0), atol=1e-10)
    assert float(dense[-1]) > 1e-3
    basis = _reduced(normal, symmetry, hessian)
    reduced = torch.linalg.eigvalsh(basis.T @ hessian @ basis)
    spectrum = _lanczos_on(model, loss_fn, basis.shape[1])
    assert spectrum.verdict == "saddle"
    assert spectrum.lambda_min == pytest.approx(float(reduced[0]), abs=1e-8)
    assert spectrum.lambda_min == pytest.approx(-spectrum.lambda_max, abs=1e-8)


@pytest.mark.parametrize("sign, expected", [(1.0, "stable"), (-1.0, "unstable")])
def test_constructed_stable_and_unstable_cases(sign, expected):
    """Cross-entropy + sign * (lam / 2) ||theta||^2: the penalty's gradient theta is block-constant
    on the manifold (still an LoP manifold); with lam above ||H_CE|N|| the sign decides."""
    model = _tiny_clone()
    x, y = _batch()
    ce = stability.model_loss(model, x, y)
    lam = 5.0

    def loss_fn(params):
        return ce(params) + sign * 0.5 * lam * sum(p.pow(2).sum() for p in params.values())

    hessian = _dense(model, loss_fn)
    normal, symmetry = _independent_spaces(model, x)
    basis = _reduced(normal, symmetry, hessian)
    assert basis.shape == normal.shape  # the penalty makes the symmetries curved: none removed
    dense = torch.linalg.eigvalsh(basis.T @ hessian @ basis)
    spectrum = _lanczos_on(model, loss_fn, basis.shape[1])
    assert spectrum.removed == ()
    assert spectrum.verdict == expected
    assert spectrum.verdict == stability.verdict(float(dense[0]), float(dense[-1]), 1e-6)
    assert spectrum.lambda_min == pytest.approx(float(dense[0]), abs=1e-8)
    assert spectrum.lambda_max == pytest.approx(float(dense[-1]), abs=1e-8)


def test_hessian_products_do_not_touch_batchnorm_statistics():
    model = _tiny_clone("relu", "batch").train()
    before = {k: b.clone() for k, b in model.named_buffers()}
    _lanczos_on(model, stability.model_loss(model, *_batch()), 8)
    for k, b in model.named_buffers():
        assert torch.equal(b, before[k]), k


def test_hessian_vector_product_matches_the_dense_hessian():
    model = _tiny_clone()
    loss_fn = stability.model_loss(model, *_batch())
    params = {k: p.detach() for k, p in model.named_parameters()}
    hessian = _dense(model, loss_fn)
    v = torch.randn(hessian.shape[0], generator=torch.Generator().manual_seed(5), dtype=F64)
    hv = _flat(stability.hessian_vector_product(loss_fn, params, _unflat(v, params)))
    assert torch.allclose(hv, hessian @ v, atol=1e-12)


def test_lanczos_on_a_known_spectrum_stops_at_the_invariant_subspace():
    values = torch.tensor([-2.0, -2.0, 0.5, 1.0, 3.0, 3.0, 3.0], dtype=F64)
    rotation, _ = torch.linalg.qr(
        torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    )
    matrix = rotation @ torch.diag(values) @ rotation.T
    ritz, vectors, residuals = stability.lanczos(
        lambda v: matrix @ v, torch.ones(7, dtype=F64), steps=7
    )
    assert ritz == pytest.approx(torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=F64), abs=1e-10)
    assert torch.allclose(matrix @ vectors, vectors * ritz, atol=1e-10)
    assert float(residuals.max()) == 0.0


def test_lanczos_residuals_are_the_true_residuals():
    diag = torch.linspace(-1.0, 2.0, 40, dtype=F64)
    ritz, vectors, residuals = stability.lanczos(
        lambda v: diag * v, torch.ones(40, dtype=F64), steps=6
    )
    true = (diag[:, None] * vectors - vectors * ritz).norm(dim=0)
    assert torch.allclose(residuals, true, atol=1e-10)
    assert float(residuals.min()) > 1e-6  # six steps do not converge forty eigenvalues


def test_verdict_follows_definition_a2():
    assert stability.verdict(0.1, 2.0, 1e-6) == "stable"
    assert stability.verdict(-2.0, -0.1, 1e-6) == "unstable"
    assert stability.verdict(-0.1, 2.0, 1e-6) == "saddle"
    assert stability.verdict(0.0, 2.0, 1e-6) == "degenerate"
    assert stability.verdict(-1.0, 1e-9, 1e-6) == "degenerate"


def _quadratic(curvature):
    """Loss 1/2 sum_k c_k ||theta_k||^2 with one curvature per parameter tensor."""

    def loss_fn_of(module):
        def loss_fn(params):
            return sum(0.5 * curvature[k] * p.pow(2).sum() for k, p in params.items())

        return loss_fn

    return loss_fn_of


def test_escape_rate_is_exact_for_a_quadratic_loss():
    """Normal deviation in one tensor of curvature c: d_t = eps |1 - lr c|^t exactly."""
    model = _tiny_clone()
    target = "blocks.1.linear.weight"
    curvature = {k: 1.0 for k, _ in model.named_parameters()}
    curvature[target] = -0.5
    g = torch.Generator().manual_seed(2)
    direction = {
        k: torch.randn(p.shape, generator=g, dtype=F64) * (k == target)
        for k, p in model.named_parameters()
    }
    lr = 0.1
    need = stability.required_steps(lr, -0.5)
    assert need == 60
    esc = stability.escape_rate(
        model, _quadratic(curvature), 1e-3, need, lr, g, direction, fit_from=0, curvature=-0.5
    )
    assert not esc.horizon_too_short and esc.required_steps == 60
    assert esc.distances[0] == pytest.approx(1e-3, rel=1e-12)
    assert esc.rate == pytest.approx(math.log(1 + lr * 0.5), abs=1e-12)
    assert esc.rate == pytest.approx(
        stability.predicted_rate(torch.tensor([-0.5, 1.0], dtype=F64), lr), abs=1e-12
    )
    short = stability.escape_rate(
        model, _quadratic(curvature), 1e-3, 10, lr, g, direction, curvature=-0.5
    )
    assert short.horizon_too_short
    assert manifold_distance(model) == 0.0  # the model itself is untouched


def test_escape_along_the_softest_direction_of_an_mlp_follows_lambda_min():
    """To first order d_{t+1} = (I - lr P'HP') d_t; over a short horizon H barely moves."""
    model = _tiny_clone()
    x, y = _batch()
    spectrum = _lanczos_on(model, stability.model_loss(model, x, y), 40)
    assert spectrum.lambda_min < 0
    lr = 0.05
    esc = stability.escape_rate(
        model,
        lambda m: stability.model_loss(m, x, y),
        1e-7,
        20,
        lr,
        None,
        direction=spectrum.min_direction,
        fit_from=0,
        removed=spectrum.removed,
        curvature=spectrum.lambda_min,
    )
    assert esc.rate == pytest.approx(math.log(1 - lr * spectrum.lambda_min), rel=0.1)
    assert esc.horizon_too_short  # 20 steps are far from 3 / (lr |lambda_min|)


def test_a_model_that_is_not_a_clone_has_no_normal_space():
    cfg = ModelConfig(arch="mlp", in_shape=(4,), num_classes=3, hidden_sizes=(3,), norm="none")
    model = build_model(cfg, seed=0).to(F64)
    structure = CloneStructure({k: (None,) * p.dim() for k, p in model.named_parameters()})
    with pytest.raises(ValueError, match="not a clone"):
        stability.normal_hessian_spectrum(
            model, stability.model_loss(model, *_batch()), 5, structure=structure
        )


def test_unknown_symmetry_family_lists_the_valid_ones():
    model = _tiny_clone()
    with pytest.raises(ValueError, match="equitable, softmax_shift"):
        stability.normal_hessian_spectrum(
            model, stability.model_loss(model, *_batch()), 5, symmetries=("scale",)
        )


def test_model_loss_uses_the_models_mode():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(F64).train()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = stability.model_loss(
        model, x, torch.zeros(8, 3, dtype=F64), lambda o, y: o.pow(2).mean()
    )
    params = {k: p.detach() for k, p in model.named_parameters()}
    assert float(loss(params)) == pytest.approx(1.0, abs=1e-3)  # batch statistics: unit variance
    assert torch.equal(model[1].running_mean, torch.zeros(3, dtype=F64))


def test_symmetry_projectors_are_the_projectors_onto_the_independent_symmetry_space():
    model = _tiny_clone()
    x, _ = _batch()
    _, symmetry = _independent_spaces(model, x)
    structure = CloneStructure.of_clone(model)
    params = {k: p.detach() for k, p in model.named_parameters()}
    columns = []
    for e in torch.eye(symmetry.shape[0], dtype=F64):
        parts = [
            structure.symmetry_part(f, _unflat(e, params)) for f in ("equitable", "softmax_shift")
        ]
        columns.append(sum(_flat(p) for p in parts))
    projector = torch.stack(columns, 1)
    assert torch.allclose(projector, symmetry @ symmetry.T, atol=1e-12)
