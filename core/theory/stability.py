"""Stability of the cloning manifold: the Hessian in the normal directions (paper Def. A.2, §8.6).

For a cloned model (`core.cloning.expand`) at parameters theta on the block-constant manifold M,
let P be the orthogonal projector onto the normal space N (tensors with zero mean on every clone
block: `core.cloning.normal_component`) and H = grad^2 L(theta). Def. A.2 classifies M at theta by
the quadratic form v^T H v on N \\ {0}:

    stable    v^T H v > 0 for every normal v   (lambda_min(H|N) > 0: perturbations decay)
    unstable  v^T H v < 0 for every normal v   (lambda_max(H|N) < 0: every perturbation grows)
    saddle    both signs occur                 (escape depends on the direction)

and "degenerate" when an extreme eigenvalue is zero within tolerance (the definition's strict
inequalities leave that case open). The extremes of the spectrum of H|N are the extreme Ritz values
of Lanczos on P H P started in N, using Hessian-vector products by double backpropagation.

The empirical counterpart: inject theta + eps v with v a unit normal vector, run full-batch
gradient descent with step lr, and fit the exponential growth rate of the distance to M. On M the
gradient is tangent, so to first order the normal deviation follows d_{t+1} = (I - lr P H P) d_t:
its rate per step tends to max_lambda log|1 - lr lambda| over the normal spectrum.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from core.cloning import manifold_distance, normal_component

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
VERDICTS = ("stable", "unstable", "saddle", "degenerate")


def model_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> LossFn:
    """params -> loss(model with these parameters (x), y); buffers and mode are the model's."""

    def loss_of(params: Params) -> torch.Tensor:
        return loss(functional_call(model, params, (x,)), y)

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
    """H v for H = grad^2 loss_fn at `params`, by differentiating <grad loss, v> once more."""
    leaves = {name: t.detach().requires_grad_(True) for name, t in params.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), create_graph=True)
        dot = sum((g * vector[name]).sum() for g, name in zip(grads, leaves))
        hv = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True)
    return {
        name: torch.zeros_like(t) if h is None else h.detach()
        for (name, t), h in zip(leaves.items(), hv)
    }


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ritz values ascending, Ritz vectors as columns) of a symmetric operator after `steps`.

    Lanczos with full reorthogonalisation: Q = [q_1 .. q_m] orthonormal spanning the Krylov space
    of `start`, T = Q^T A Q tridiagonal, Ritz pairs from eigh(T). Stops early, exactly, when the
    Krylov space is invariant (beta below 1e-10 times the largest |alpha|, beta).
    """
    q = start / start.norm()
    basis, alphas, betas = [q], [], []
    for _ in range(steps):
        w = matvec(basis[-1])
        alphas.append(float(basis[-1] @ w))
        stacked = torch.stack(basis)  # (m, dim)
        w = w - stacked.T @ (stacked @ w)
        w = w - stacked.T @ (stacked @ w)  # twice is enough (Kahan-Parlett)
        beta = float(w.norm())
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0))
        if len(basis) == steps or beta <= 1e-10 * max(scale, 1e-300):
            break
        betas.append(beta)
        basis.append(w / beta)
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: m - 1], dtype=torch.float64)
    t += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    ritz = torch.stack(basis[:m]).T @ vectors.to(start.dtype)  # (dim, m)
    return values, ritz


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
    """Lanczos on the Hessian restricted to the normal space of the cloning manifold."""

    ritz_values: torch.Tensor  # ascending; the extremes converge first
    lambda_min: float  # smallest normal eigenvalue (Ritz estimate)
    lambda_max: float  # largest normal eigenvalue (Ritz estimate)
    verdict: str  # stable | unstable | saddle | degenerate (Def. A.2)
    min_direction: Params  # unit normal Ritz vector of lambda_min
    max_direction: Params  # unit normal Ritz vector of lambda_max


def normal_hessian_spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    steps: int,
    generator: torch.Generator,
    rtol: float = 1e-6,
) -> NormalSpectrum:
    """Extreme eigenvalues of H on the normal space of `model`'s cloning manifold, and the verdict.

    Lanczos (`steps` iterations) on v -> P H P v from a random normal start drawn from `generator`.
    An eigenvalue with |lambda| <= rtol * max(|lambda_min|, |lambda_max|) counts as zero.
    """
    params = _parameters(model)

    def project(vector: torch.Tensor) -> torch.Tensor:
        return _flatten(normal_component(model, _unflatten(vector, params)))

    def matvec(vector: torch.Tensor) -> torch.Tensor:
        hv = hessian_vector_product(loss_fn, params, _unflatten(project(vector), params))
        return project(_flatten(hv))

    flat = _flatten(params)
    noise = torch.randn(flat.shape, generator=generator, dtype=flat.dtype, device=generator.device)
    start = project(noise.to(flat.device))
    if float(start.norm()) == 0.0:
        raise ValueError(
            "the model has no normal directions: it is not a clone (clone_factor 1, or every "
            "parameter untouched by expansion); clone it with core.cloning.expand first"
        )
    values, vectors = lanczos(matvec, start, steps)
    lo, hi = float(values[0]), float(values[-1])
    return NormalSpectrum(
        ritz_values=values,
        lambda_min=lo,
        lambda_max=hi,
        verdict=verdict(lo, hi, rtol * max(abs(lo), abs(hi))),
        min_direction=_unflatten(vectors[:, 0].clone(), params),
        max_direction=_unflatten(vectors[:, -1].clone(), params),
    )


@dataclass(frozen=True)
class Escape:
    """Distance to the cloning manifold under gradient descent after a normal perturbation."""

    distances: list[float]  # d_t, t = 0 .. steps (d_0 = eps when the model starts on M)
    rate: float  # fitted growth rate per step: d_t ~ exp(c + rate t) over the fitted steps
    fit_from: int  # first step of the fit


def escape_rate(
    model: nn.Module,
    loss_fn_of: Callable[[nn.Module], LossFn],
    eps: float,
    steps: int,
    lr: float,
    generator: torch.Generator,
    direction: Params | None = None,
    fit_from: int | None = None,
) -> Escape:
    """Inject eps v (v a unit normal vector), run `steps` gradient-descent steps, fit the rate.

    `loss_fn_of(m)` builds the loss of module m (e.g. `lambda m: model_loss(m, x, y)`); the model
    itself is not changed (a copy is trained). v is `direction` projected onto the normal space,
    else a random normal vector from `generator`. The rate is the least-squares slope of log d_t
    over t >= fit_from (default steps // 2, past the transients of the faster modes); it tends to
    max_lambda log|1 - lr lambda| over the normal spectrum (`predicted_rate`).
    """
    moved = copy.deepcopy(model)
    params = _parameters(moved)
    if direction is None:
        direction = {
            name: torch.randn(t.shape, generator=generator, dtype=t.dtype, device=generator.device)
            for name, t in params.items()
        }
    normal = normal_component(moved, {k: v.to(params[k].device) for k, v in direction.items()})
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in normal.values()))
    if norm == 0.0:
        raise ValueError("the perturbation has no normal component (is the model a clone?)")
    leaves = dict(moved.named_parameters())
    with torch.no_grad():
        for name, v in normal.items():
            leaves[name].add_(v, alpha=eps / norm)
    loss_fn = loss_fn_of(moved)
    distances = [manifold_distance(moved)]
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(leaves.values(), grads):
                if g is not None:
                    p.sub_(g, alpha=lr)
        distances.append(manifold_distance(moved))
    start = steps // 2 if fit_from is None else fit_from
    t = torch.arange(start, steps + 1, dtype=torch.float64)
    logd = torch.tensor(distances[start:], dtype=torch.float64).clamp_min(1e-300).log()
    slope = float(((t - t.mean()) * (logd - logd.mean())).sum() / ((t - t.mean()) ** 2).sum())
    return Escape(distances=distances, rate=slope, fit_from=start)


def predicted_rate(ritz_values: torch.Tensor, lr: float) -> float:
    """max_lambda log|1 - lr lambda|: the linearised growth rate of a normal deviation per step."""
    return float((1.0 - lr * ritz_values).abs().clamp_min(1e-300).log().max())
