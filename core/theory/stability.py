"""Stability of a cloning manifold: the Hessian in the normal directions (paper Def. A.2, App. A.5).

For a model whose parameters theta lie on the block-constant manifold of a clone partition
(`core.theory.manifold.CloneStructure`), let N be the normal space (zero sum on every block) and
H = grad^2 L(theta). N contains exact zero modes, whatever the data (`manifold.SYMMETRY_FAMILIES`):
the within-block redistributions of hidden-to-hidden weights (tangent to the equitable manifold of
Theorem 2.1, on which the loss is constant) and, for a softmax cross-entropy, the shift of every
logit by one zero-block-sum combination of the last hidden units. On them v^T H v = 0 exactly, so
a verdict on all of N could never be "stable" or "unstable". Each family is checked to be null for
the loss at hand (||H v|| <= `symmetry_rtol` * ||H|N|| for a generic v in it) and then removed:
the verdict is taken on the reduced normal space N' = N minus the verified families. Def. A.2 on N':

    stable    v^T H v > 0 for every v in N'   (lambda_min > 0: perturbations decay)
    unstable  v^T H v < 0 for every v in N'   (lambda_max < 0: every perturbation grows)
    saddle    both signs occur                (escape depends on the direction)

and "degenerate" when an extreme eigenvalue is zero within tolerance. The extremes are the extreme
Ritz values of Lanczos on P' H P' (P' the projector onto N'), with Hessian-vector products by double
backpropagation on copies of the model's buffers (BatchNorm statistics are never updated).

For ReLU and leaky-ReLU networks without normalisation the spectrum on N is exactly symmetric
about 0: a normal perturbation of one layer alone leaves the next layer's pre-activations unchanged
(the activation is linear between kinks), so H|N couples only adjacent layers; flipping the sign
of every other layer's component maps H|N to -H|N. Such a manifold is a saddle (or degenerate).

The empirical counterpart: inject theta + eps v with v the softest normal eigenvector, run
full-batch gradient descent with step lr, and fit the growth rate of the distance to the manifold.
To first order the normal deviation follows d_{t+1} = (I - lr P'HP') d_t, so along v it grows by
|1 - lr lambda_min| per step; one e-fold needs 1 / (lr |lambda_min|) steps, and a fit needs a few.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.theory.manifold import SYMMETRY_FAMILIES, CloneStructure

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
VERDICTS = ("stable", "unstable", "saddle", "degenerate")
ESCAPE_EFOLDS = 3.0  # the escape runs at least ESCAPE_EFOLDS / (lr |lambda_min|) steps


MODES = ("eval", "train")  # the model's mode in the loss (`model.train(mode == "train")`)


def model_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> LossFn:
    """params -> loss(model with these parameters (x), y), in the model's mode.

    Every call runs on fresh copies of the model's buffers, so a train-mode BatchNorm uses batch
    statistics without updating its running statistics.
    """

    def loss_of(params: Params) -> torch.Tensor:
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return loss(functional_call(model, {**buffers, **params}, (x,)), y)

    return loss_of


def _parameters(model: nn.Module) -> Params:
    return {name: p.detach() for name, p in model.named_parameters()}


def _flatten(tensors: Params) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflatten(vector: torch.Tensor, like: Params) -> Params:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = vector[start : start + t.numel()].view_as(t)
        start += t.numel()
    return out


def hessian_vector_product(loss_fn: LossFn, params: Params, vector: Params) -> Params:
    """H v for H = grad^2 loss_fn at `params`, by differentiating <grad loss, v> once more.

    Attention runs on the math backend of `scaled_dot_product_attention` (the fused kernels have
    no second derivative).
    """
    leaves = {name: t.detach().requires_grad_(True) for name, t in params.items()}
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), create_graph=True)
        dot = sum((g * vector[name]).sum() for g, name in zip(grads, leaves))
        hv = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True)
    return {
        name: torch.zeros_like(t) if h is None else h.detach()
        for (name, t), h in zip(leaves.items(), hv)
    }


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Ritz values ascending, Ritz vectors as columns, residual norms) of a symmetric operator.

    Lanczos with full reorthogonalisation: Q = [q_1 .. q_m] orthonormal spanning the Krylov space
    of `start`, T = Q^T A Q tridiagonal, Ritz pairs (theta_i, y_i = Q s_i) from eigh(T). The
    residual ||A y_i - theta_i y_i|| = beta_m |s_mi| (beta_m the norm of the next Lanczos vector)
    bounds the distance from theta_i to an eigenvalue of A. Stops early, exactly (residuals 0),
    when the Krylov space is invariant (beta below 1e-10 times the largest |alpha|, beta).
    `project`, the projector onto the subspace the operator acts on, is applied to every new
    Lanczos vector: rounding outside that subspace (where the operator is 0) would otherwise be
    amplified by 1 / beta at every step once the extreme eigenvalues converge.
    """
    q = start / start.norm()
    basis, alphas, betas = [q], [], []
    last_beta = 0.0
    for _ in range(steps):
        w = matvec(basis[-1])
        alphas.append(float(basis[-1] @ w))
        stacked = torch.stack(basis)  # (m, dim)
        w = w - stacked.T @ (stacked @ w)
        w = w - stacked.T @ (stacked @ w)  # twice is enough (Kahan-Parlett)
        if project is not None:
            w = project(w)  # keeps w orthogonal to the basis, which lies in the subspace
        beta = float(w.norm())
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0))
        if beta <= 1e-10 * max(scale, 1e-300):
            break
        if len(basis) == steps:
            last_beta = beta
            break
        betas.append(beta)
        basis.append(w / beta)
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: m - 1], dtype=torch.float64)
    t += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    ritz = torch.stack(basis[:m]).T @ vectors.to(start.dtype)  # (dim, m)
    return values, ritz, last_beta * vectors[-1].abs()


def verdict(lambda_min: float, lambda_max: float, tol: float) -> str:
    """Def. A.2 from the extreme normal eigenvalues; |lambda| <= tol counts as zero."""
    if lambda_min > tol:
        return "stable"
    if lambda_max < -tol:
        return "unstable"
    if lambda_min < -tol and lambda_max > tol:
        return "saddle"
    return "degenerate"


@dataclass(frozen=True)
class NormalSpectrum:
    """Lanczos on the Hessian restricted to the reduced normal space N' of a clone partition."""

    ritz_values: torch.Tensor  # ascending; the extremes converge first
    residuals: torch.Tensor  # ||A y - theta y|| of each Ritz pair
    lambda_min: float  # smallest eigenvalue on N' (Ritz estimate)
    lambda_max: float  # largest eigenvalue on N' (Ritz estimate)
    verdict: str  # stable | unstable | saddle | degenerate (Def. A.2 on N')
    tolerance: float  # |lambda| <= tolerance counts as zero in the verdict
    min_direction: Params  # unit Ritz vector of lambda_min, in N'
    dimensions: dict[str, int]  # parameters, block_constant, normal, and each family's size
    removed: tuple[str, ...]  # symmetry families verified null and projected out
    symmetry_checks: dict[str, float] = field(default_factory=dict)  # ||H v|| / ||H|N|| per family

    @property
    def reduced_dimension(self) -> int:
        """dim N': the normal dimension minus the removed symmetry directions."""
        return self.dimensions["normal"] - sum(self.dimensions[f] for f in self.removed)


def _pattern(numel: int, dtype: torch.dtype, device: torch.device, phase: float) -> torch.Tensor:
    """A fixed generic vector (no RNG): sin(0.7 k + phase) + 0.3 cos(1.9 k)."""
    k = torch.arange(numel, dtype=torch.float64)
    return (torch.sin(0.7 * k + phase) + 0.3 * torch.cos(1.9 * k)).to(device=device, dtype=dtype)


def _default_symmetry_rtol(dtype: torch.dtype) -> float:
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)  # 1.5e-7 in float64, 3.5e-3 in float32


def reduced_projector(
    structure: CloneStructure, removed: tuple[str, ...]
) -> Callable[[Params], Params]:
    """The orthogonal projector onto N' = N minus the families in `removed`."""
    return lambda tensors: structure.reduced_normal(tensors, removed)


def normal_hessian_spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    steps: int,
    generator: torch.Generator | None = None,
    rtol: float = 1e-6,
    structure: CloneStructure | None = None,
    symmetries: tuple[str, ...] = SYMMETRY_FAMILIES,
    symmetry_rtol: float | None = None,
) -> NormalSpectrum:
    """Extreme eigenvalues of H on the reduced normal space of a clone partition, and the verdict.

    `structure`: the partition (default: the planted one of a `core.cloning.expand`ed model).
    `symmetries`: the families to check and, when null for `loss_fn`, remove (default: all of
    `SYMMETRY_FAMILIES`; () keeps the full normal space). Lanczos runs `steps` iterations on
    v -> P' H P' v from a random start drawn from `generator`, or from a fixed generic vector when
    it is None. An eigenvalue counts as zero when |lambda| <= max(rtol * max(|lambda_min|,
    |lambda_max|), the residuals of the two extreme Ritz pairs).
    """
    unknown = [f for f in symmetries if f not in SYMMETRY_FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown symmetry families {unknown}; valid: {', '.join(SYMMETRY_FAMILIES)}"
        )
    structure = CloneStructure.of_clone(model) if structure is None else structure
    params = _parameters(model)
    flat = _flatten(params)
    dims = structure.dimensions(params)
    if dims["normal"] == 0:
        raise ValueError(
            "the model has no normal directions: it is not a clone (no block holds two units); "
            "clone it with core.cloning.expand, or diagnose it with core.diagnose"
        )

    def hv(vector: torch.Tensor) -> torch.Tensor:
        return _flatten(hessian_vector_product(loss_fn, params, _unflatten(vector, params)))

    def apply(projector: Callable[[Params], Params], vector: torch.Tensor) -> torch.Tensor:
        return _flatten(projector(_unflatten(vector, params)))

    normal_start = apply(structure.normal, _pattern(flat.numel(), flat.dtype, flat.device, 0.3))
    scale = float(apply(structure.normal, hv(normal_start)).norm() / normal_start.norm())
    rtol_sym = _default_symmetry_rtol(flat.dtype) if symmetry_rtol is None else symmetry_rtol
    checks, removed = {}, []
    for family in symmetries:
        if dims[family] == 0:
            continue
        part = lambda t, f=family: structure.symmetry_part(f, t)  # noqa: E731
        v = apply(part, _pattern(flat.numel(), flat.dtype, flat.device, 1.1))
        ratio = float(hv(v).norm() / v.norm()) / max(scale, 1e-300)
        checks[family] = ratio
        if ratio <= rtol_sym:
            removed.append(family)
    project = reduced_projector(structure, tuple(removed))

    if generator is None:
        noise = _pattern(flat.numel(), flat.dtype, flat.device, 2.3)
    else:
        noise = torch.randn(
            flat.shape, generator=generator, dtype=flat.dtype, device=generator.device
        )
    start = apply(project, noise.to(flat.device))
    if float(start.norm()) == 0.0:
        raise ValueError("the reduced normal space is empty: every normal direction is a symmetry")
    values, vectors, residuals = lanczos(
        lambda v: apply(project, hv(apply(project, v))),
        start,
        steps,
        project=lambda v: apply(project, v),
    )
    lo, hi = float(values[0]), float(values[-1])
    tol = max(rtol * max(abs(lo), abs(hi)), float(residuals[0]), float(residuals[-1]))
    return NormalSpectrum(
        ritz_values=values,
        residuals=residuals,
        lambda_min=lo,
        lambda_max=hi,
        verdict=verdict(lo, hi, tol),
        tolerance=tol,
        min_direction=_unflatten(vectors[:, 0].clone(), params),
        dimensions=dims,
        removed=tuple(removed),
        symmetry_checks=checks,
    )


@dataclass(frozen=True)
class Escape:
    """Distance to the (reduced) cloning manifold under gradient descent after a perturbation."""

    distances: list[float]  # d_t, t = 0 .. steps (d_0 = eps when the model starts on M)
    rate: float  # fitted growth rate per step: d_t ~ exp(c + rate t) over the fitted steps
    fit_from: int  # first step of the fit
    required_steps: int | None  # ESCAPE_EFOLDS / (lr |lambda|) of the direction's curvature
    horizon_too_short: bool  # steps < required_steps: the fitted rate is not comparable


def required_steps(lr: float, curvature: float) -> int | None:
    """ceil(ESCAPE_EFOLDS / (lr |curvature|)): steps for the deviation to change by e^3."""
    if curvature == 0.0 or lr <= 0.0:
        return None
    return math.ceil(ESCAPE_EFOLDS / (lr * abs(curvature)))


def escape_rate(
    model: nn.Module,
    loss_fn_of: Callable[[nn.Module], LossFn],
    eps: float,
    steps: int,
    lr: float,
    generator: torch.Generator | None,
    direction: Params | None = None,
    fit_from: int | None = None,
    structure: CloneStructure | None = None,
    removed: tuple[str, ...] = (),
    curvature: float | None = None,
) -> Escape:
    """Inject eps v (v a unit vector of N'), run `steps` gradient-descent steps, fit the rate.

    `loss_fn_of(m)` builds the loss of module m (e.g. `lambda m: model_loss(m, x, y)`); the model
    itself is not changed (a copy is trained). v is `direction` projected onto N' (pass the
    spectrum's `min_direction`: the softest normal eigenvector), else a random vector from
    `generator`. The distance is ||P' theta_t|| (N' = the normal space of `structure` minus the
    `removed` symmetry families). The rate is the least-squares slope of log d_t over t >= fit_from
    (default steps // 2); along an eigenvector of curvature lambda it is log|1 - lr lambda|.
    With `curvature` (the direction's eigenvalue) the escape reports whether `steps` reaches
    `required_steps(lr, curvature)`.
    """
    structure = CloneStructure.of_clone(model) if structure is None else structure
    project = reduced_projector(structure, removed)
    moved = copy.deepcopy(model)
    params = _parameters(moved)
    if direction is None:
        if generator is None:
            raise ValueError("escape_rate needs a direction or a generator to draw one")
        direction = {
            name: torch.randn(t.shape, generator=generator, dtype=t.dtype, device=generator.device)
            for name, t in params.items()
        }
    normal = project({k: direction[k].to(params[k].device) for k in params})
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in normal.values()))
    if norm == 0.0:
        raise ValueError("the perturbation has no normal component (is the model a clone?)")
    leaves = dict(moved.named_parameters())

    def distance() -> float:
        return math.sqrt(
            sum(float(v.double().pow(2).sum()) for v in project(_parameters(moved)).values())
        )

    with torch.no_grad():
        for name, v in normal.items():
            leaves[name].add_(v, alpha=eps / norm)
    loss_fn = loss_fn_of(moved)
    distances = [distance()]
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(leaves.values(), grads):
                if g is not None:
                    p.sub_(g, alpha=lr)
        distances.append(distance())
    start = steps // 2 if fit_from is None else fit_from
    t = torch.arange(start, steps + 1, dtype=torch.float64)
    logd = torch.tensor(distances[start:], dtype=torch.float64).clamp_min(1e-300).log()
    slope = float(((t - t.mean()) * (logd - logd.mean())).sum() / ((t - t.mean()) ** 2).sum())
    need = None if curvature is None else required_steps(lr, curvature)
    return Escape(
        distances=distances,
        rate=slope,
        fit_from=start,
        required_steps=need,
        horizon_too_short=need is not None and steps < need,
    )


def predicted_rate(ritz_values: torch.Tensor, lr: float) -> float:
    """max_lambda log|1 - lr lambda|: the linearised growth rate of a normal deviation per step."""
    return float((1.0 - lr * ritz_values).abs().clamp_min(1e-300).log().max())


@dataclass(frozen=True)
class Stability:
    """The spectrum on N', its linearised growth rates at step lr, and the measured escape."""

    spectrum: NormalSpectrum
    predicted_rate_softest: float  # log|1 - lr lambda_min| per step
    predicted_rate: float  # max over the Ritz values of log|1 - lr lambda|
    required_steps: int | None  # ESCAPE_EFOLDS / (lr |lambda_min|): a meaningful escape's horizon
    steps: int  # escape steps run
    escape: Escape | None  # along the softest normal eigenvector; None when no step ran


def analyse_stability(
    model: nn.Module,
    loss_fn_of: Callable[[nn.Module], LossFn],
    lanczos_steps: int,
    lr: float,
    generator: torch.Generator | None,
    structure: CloneStructure,
    escape_steps: int | None,
    max_escape_steps: int,
    eps: float,
) -> Stability:
    """`normal_hessian_spectrum` of `loss_fn_of(model)`, then `escape_rate` from eps times its
    softest eigenvector for `escape_steps` steps (0: no escape; None: `required_steps`, at most
    `max_escape_steps`, 100 when lambda_min is 0)."""
    spectrum = normal_hessian_spectrum(
        model, loss_fn_of(model), lanczos_steps, generator, structure=structure
    )
    need = required_steps(lr, spectrum.lambda_min)
    steps = min(need or 100, max_escape_steps) if escape_steps is None else escape_steps
    escape = None
    if steps > 0:
        escape = escape_rate(
            model,
            loss_fn_of,
            eps,
            steps,
            lr,
            generator,
            direction=spectrum.min_direction,
            structure=structure,
            removed=spectrum.removed,
            curvature=spectrum.lambda_min,
        )
    return Stability(
        spectrum=spectrum,
        predicted_rate_softest=math.log(max(abs(1.0 - lr * spectrum.lambda_min), 1e-300)),
        predicted_rate=predicted_rate(spectrum.ritz_values, lr),
        required_steps=need,
        steps=steps,
        escape=escape,
    )
