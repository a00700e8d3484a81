"""`diagnose`: is a model on a loss-of-plasticity manifold, which one, and can descent leave it?

One forward and one backward on a batch give, per layer (`core.metrics.select_layers`):
frozen units (|phi'| < eps on the inputs), dead units (output 0 on every row) and the clone blocks
discovered from forward values and back-propagated errors (`core.metrics.partition`). The
partitions of every parameter's input and output units define the clone structure of the whole
model (`core.theory.CloneStructure`): the distance of the weights to its block-constant manifold,
whether they are row/column-equitable (Theorem 2.1's manifold), its dimension against the parameter
count, and the verdict of Def. A.2 on the Hessian restricted to the normal space with the exact
symmetry directions removed (`core.theory.normal_hessian_spectrum`). docs/diagnose.md explains
each number and its cost.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from matplotlib.figure import Figure
from torch import nn

from core.diagnose.capture import Capture, capture
from core.metrics.partition import (
    FROZEN_EPS,
    activation_slopes,
    block_ids,
    clone_blocks,
    dead_units,
    default_tolerance,
    frozen_units,
)
from core.metrics.probe import ACTIVATION_TYPES, NORM_TYPES, WEIGHT_TYPES, select_layers
from core.theory.manifold import CloneStructure
from core.theory.stability import MODES, analyse_stability, model_loss


@dataclass(frozen=True)
class LayerDiagnosis:
    """One layer: its units, clone blocks, frozen units (activation layers) and dead units."""

    name: str
    units: int
    clone_blocks: list[list[int]]  # sorted blocks of >= 2 unit indices, sorted by first index
    frozen_units: list[int]  # |phi'| < eps on the chosen fraction of rows ([] if no activation)
    dead_units: list[int]  # output exactly 0 on every row
    activation: bool  # whether frozen units were measured (an activation module)

    @property
    def cloned_units(self) -> int:
        return sum(len(b) for b in self.clone_blocks)


@dataclass(frozen=True)
class ManifoldDiagnosis:
    """The weights against the clone structure of the discovered partition (Theorem 2.1)."""

    state: str  # block-constant | equitable | off | no clones
    distance: float  # ||theta - blockmean(theta)||: distance to the block-constant manifold
    incoming: float  # the part breaking equal incoming sums (forward cloning)
    outgoing: float  # the part breaking equal outgoing sums (backward cloning)
    redistribution: float  # within-block redistribution (keeps the clones exact)
    parameter_norm: float  # ||theta|| over the partitioned tensors
    dimensions: dict[str, int]  # parameters, block_constant, equitable, manifold, normal, ...


@dataclass(frozen=True)
class StabilityDiagnosis:
    """Def. A.2 on the reduced normal space (core.theory.normal_hessian_spectrum)."""

    verdict: str  # stable | unstable | saddle | degenerate
    lambda_min: float
    lambda_max: float
    residual_min: float
    residual_max: float
    tolerance: float
    removed: list[str]  # symmetry families verified null and projected out
    reduced_dimension: int
    ritz_values: list[float]
    lr: float
    predicted_rate_softest: float  # log|1 - lr lambda_min| per step
    predicted_rate: float  # max over the Ritz values of log|1 - lr lambda|
    required_steps: int | None  # 3 / (lr |lambda_min|): the horizon of a meaningful escape
    escape: dict | None = None  # measured escape along the softest direction, when asked


@dataclass(frozen=True)
class Diagnosis:
    """The result of `diagnose`; `to_markdown()`, `to_json()`, `figure()`."""

    loss: float
    tolerance: float
    layers: dict[str, LayerDiagnosis]
    manifold: ManifoldDiagnosis
    stability: StabilityDiagnosis | None  # None when no clone block was found
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layers"] = {
            k: {**asdict(v), "cloned_units": v.cloned_units} for k, v in self.layers.items()
        }
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            "# Loss-of-plasticity diagnosis",
            "",
            f"Loss {self.loss:.6g} on the batch; clone tolerance {self.tolerance:.2g}.",
            "",
            "| layer | units | frozen | dead | cloned | blocks (sizes) |",
            "|---|---|---|---|---|---|",
        ]
        for d in self.layers.values():
            sizes = sorted({len(b) for b in d.clone_blocks})
            frozen = str(len(d.frozen_units)) if d.activation else "-"
            blocks = f"{len(d.clone_blocks)} ({', '.join(map(str, sizes))})" if sizes else "0"
            lines.append(
                f"| {d.name} | {d.units} | {frozen} | {len(d.dead_units)} | {d.cloned_units} "
                f"| {blocks} |"
            )
        m = self.manifold
        dims = m.dimensions
        lines += [
            "",
            "## Manifold (Theorem 2.1)",
            "",
            f"- state: **{m.state}**",
            f"- distance to the block-constant manifold: {m.distance:.3g} "
            f"(parameter norm {m.parameter_norm:.3g})",
            f"- breaking incoming sums {m.incoming:.3g}, outgoing sums {m.outgoing:.3g}; "
            f"within-block redistribution {m.redistribution:.3g}",
            f"- dimension: manifold {dims['manifold']} (block-constant {dims['block_constant']} "
            f"+ redistributions {dims['equitable']}) of {dims['parameters']} parameters; "
            f"normal space {dims['normal']}",
        ]
        s = self.stability
        lines += ["", "## Stability (Def. A.2)", ""]
        if s is None:
            lines.append("No clone block: there is no cloning manifold to be stable or not.")
        else:
            steps = "-" if s.required_steps is None else str(s.required_steps)
            lines += [
                f"- verdict: **{s.verdict}** on {s.reduced_dimension} normal directions "
                f"(removed symmetries: {', '.join(s.removed) or 'none'})",
                f"- lambda_min {s.lambda_min:.4g} (residual {s.residual_min:.2g}), "
                f"lambda_max {s.lambda_max:.4g} (residual {s.residual_max:.2g}); "
                f"zero within {s.tolerance:.2g}",
                f"- predicted escape rate at lr {s.lr:g}: {s.predicted_rate_softest:.3g} per step "
                f"along the softest direction ({steps} steps for three e-folds); "
                f"fastest mode {s.predicted_rate:.3g}",
            ]
            if s.escape is not None:
                e = s.escape
                short = " (horizon too short)" if e["horizon_too_short"] else ""
                lines.append(
                    f"- measured escape rate: {e['rate']:.3g} over {e['steps']} steps{short}"
                )
        return "\n".join(lines) + "\n"

    def figure(self) -> Figure:
        """Units per layer coloured frozen / cloned / free (left), the normal spectrum (right)."""
        fig = Figure(figsize=(10.0, 0.35 * len(self.layers) + 2.0))
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        names = list(self.layers)
        frozen = [len(d.frozen_units) for d in self.layers.values()]
        cloned = [
            len({u for b in d.clone_blocks for u in b} - set(d.frozen_units))
            for d in self.layers.values()
        ]
        free = [d.units - f - c for d, f, c in zip(self.layers.values(), frozen, cloned)]
        ys = range(len(names))
        left.barh(ys, frozen, color="tab:blue", label="frozen")
        left.barh(ys, cloned, left=frozen, color="tab:orange", label="cloned")
        left.barh(ys, free, left=[f + c for f, c in zip(frozen, cloned)], color="0.8", label="free")
        left.set_yticks(list(ys), names, fontsize=7)
        left.invert_yaxis()
        left.set_xlabel("units")
        left.legend(fontsize=7)
        if self.stability is not None:
            values = self.stability.ritz_values
            right.plot(range(len(values)), values, "o", ms=3)
            right.axhline(0.0, color="0.5", lw=0.8)
            right.set_title(f"normal spectrum: {self.stability.verdict}", fontsize=9)
            right.set_xlabel("Ritz value index")
        else:
            right.set_title("no clone blocks", fontsize=9)
        fig.tight_layout()
        return fig


def _is_input(item: object) -> bool:
    return isinstance(item, str) and item.endswith(":input")


def _paths(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def _head_modules(model: nn.Module) -> dict[str, str]:
    """Attention modules with heads as units: {module path: the Linear reading the heads}."""
    out = {}
    for name, m in model.named_modules():
        heads = getattr(m, "n_heads", getattr(m, "num_heads", None))
        proj = getattr(m, "proj", getattr(m, "out_proj", None))
        if isinstance(heads, int) and heads > 1 and type(proj) is nn.Linear:
            out[name] = f"{name}.proj" if getattr(m, "proj", None) is proj else f"{name}.out_proj"
    return out


def _heads_view(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(rows, heads * head_dim) -> (rows * head_dim, heads): a head is a unit."""
    rows, width = t.shape
    return t.reshape(rows, heads, width // heads).permute(0, 2, 1).reshape(-1, heads)


def _structure(
    model: nn.Module, cap: Capture, tol: float, site_blocks: dict[tuple[str, str], list[list[int]]]
) -> CloneStructure:
    """The clone partition of every parameter, from the partitions of its module's sites.

    `site_blocks` caches the clone blocks of each site (the layers' are already there)."""

    def ids(path: str, kind: str, units: int) -> torch.Tensor | None:
        key = (path, kind)
        site = cap.sites.get(key)
        if site is None or site.values[0].shape[1] != units:
            return None
        if key not in site_blocks:
            site_blocks[key] = clone_blocks(site.matrix(), site.error_matrix(), tol)
        return block_ids(site_blocks[key], units)

    axes: dict[str, tuple] = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        direct = dict(module.named_parameters(recurse=False))
        if not direct:
            continue
        for pname, p in direct.items():
            name = prefix + pname
            if isinstance(module, WEIGHT_TYPES) and pname == "weight":
                grouped = getattr(module, "groups", 1) == 1
                inputs = ids(path, "input", p.shape[1]) if grouped else None
                axes[name] = (ids(path, "output", p.shape[0]), inputs) + (None,) * (p.dim() - 2)
            elif isinstance(module, WEIGHT_TYPES + NORM_TYPES) and p.dim() == 1:
                axes[name] = (ids(path, "output", p.shape[0]),)
            elif p.dim() >= 1 and p.shape[-1] > 1:
                grad = cap.param_grads[name]
                values = p.detach().reshape(-1, p.shape[-1])
                blocks = clone_blocks(values, grad.reshape(-1, p.shape[-1]), tol)
                axes[name] = (None,) * (p.dim() - 1) + (block_ids(blocks, p.shape[-1]),)
    logits = ()
    out_path = cap.output_module
    if out_path is not None and type(dict(model.named_modules())[out_path]) is nn.Linear:
        name = f"{out_path}.weight" if out_path else "weight"
        if name in axes and axes[name][0] is None and axes[name][1] is not None:
            logits = (name,)
    return CloneStructure(axes, logits)


def _manifold(structure: CloneStructure, params: dict[str, torch.Tensor], tol: float):
    report = structure.equitability(params)
    dims = structure.dimensions(params)
    dims["manifold"] = dims["block_constant"] + dims["equitable"]
    total = {k: math.sqrt(sum(r[k] ** 2 for r in report.values())) for k in
             ("norm", "normal", "incoming", "outgoing", "redistribution")}  # fmt: skip
    scale = tol * max(total["norm"], 1e-300)
    if dims["normal"] == 0:
        state = "no clones"
    elif total["normal"] <= scale:
        state = "block-constant"
    elif total["incoming"] <= scale and total["outgoing"] <= scale:
        state = "equitable"
    else:
        state = "off"
    return ManifoldDiagnosis(
        state=state,
        distance=total["normal"],
        incoming=total["incoming"],
        outgoing=total["outgoing"],
        redistribution=total["redistribution"],
        parameter_norm=total["norm"],
        dimensions=dims,
    )


def diagnose(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    layers: Sequence[str | type[nn.Module]] | None = None,
    *,
    tolerance: float | None = None,
    frozen_eps: float = FROZEN_EPS,
    frozen_fraction: float = 1.0,
    stability: bool = True,
    lanczos_steps: int = 30,
    lr: float = 0.01,
    escape_steps: int = 0,
    escape_eps: float = 1e-6,
    mode: str = "eval",
    stability_dtype: torch.dtype | None = torch.float64,
    generator: torch.Generator | None = None,
) -> Diagnosis:
    """Diagnose `model` on the batch (inputs, targets) with `loss_fn(output, targets)` (a mean).

    `layers`: module paths and/or module types to report (`core.metrics.select_layers`; default:
    the built-ins' declared layers, else every Linear/Conv/norm/activation; `"<path>:input"` is
    the input of that module, e.g. `"head:input"` the pre-head features of the built-in ResNet
    and ViT), plus `<path>.heads` for attention modules whose heads feed a `proj`/`out_proj`
    Linear. `tolerance`: relative
    tolerance of the clone test and of the manifold state (default sqrt(eps) of the inputs'
    dtype; see `core.metrics.partition`). A unit of an activation layer is frozen when
    |phi'(pre)| < `frozen_eps` on at least `frozen_fraction` of the rows. `stability`: Lanczos
    (`lanczos_steps`) on the reduced normal Hessian, on a `stability_dtype` copy (None: as is);
    `escape_steps` > 0 also measures the escape along the softest direction at step `lr`.
    `mode`: eval (default; BatchNorm running statistics, dropout off) or train; the model's
    modes, parameters and buffers are left as they were. The Lanczos start is a fixed generic
    vector unless `generator` is given.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not 0.0 < frozen_fraction <= 1.0:
        raise ValueError(f"frozen_fraction must be in (0, 1], got {frozen_fraction}")
    tol = default_tolerance(inputs.dtype if inputs.is_floating_point() else torch.float32)
    tol = tol if tolerance is None else tolerance
    inputs_of = [item[: -len(":input")] for item in layers or () if _is_input(item)]
    plain = None if layers is None else [item for item in layers if not _is_input(item)]
    chosen = select_layers(model, plain) if plain or not inputs_of else []
    for path in inputs_of:
        select_layers(model, [path])  # a clear error for an unknown path
    paths_of = _paths(model)
    layer_paths = {layer.name: (paths_of[id(layer.module)], "output") for layer in chosen}
    layer_paths.update({f"{path}:input": (path, "input") for path in inputs_of})
    heads = _head_modules(model)
    owners = {p for p, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    sites = owners | {path for path, _ in layer_paths.values()} | set(heads.values())
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(mode == "train")
        cap = capture(model, inputs, targets, loss_fn, sites)
    finally:
        for module, training in modes:
            module.training = training
    modules = dict(model.named_modules())

    reports: dict[str, LayerDiagnosis] = {}
    site_blocks: dict[tuple[str, str], list[list[int]]] = {}
    for name, (path, kind) in layer_paths.items():
        site = cap.sites.get((path, kind))
        if site is None:
            raise RuntimeError(
                f"layer {name} ({path or 'the model'}) produced no (rows, units) {kind}"
            )
        values, errors = site.matrix(), site.error_matrix()
        module = modules[path]
        is_activation = kind == "output" and isinstance(module, ACTIVATION_TYPES)
        frozen: list[int] = []
        if is_activation and (path, "input") in cap.sites:
            slopes = activation_slopes(module, cap.sites[(path, "input")].matrix())
            frozen = frozen_units(slopes, frozen_eps, frozen_fraction)
        reports[name] = LayerDiagnosis(
            name=name,
            units=values.shape[1],
            clone_blocks=site_blocks.setdefault((path, kind), clone_blocks(values, errors, tol)),
            frozen_units=frozen,
            dead_units=dead_units(values),
            activation=is_activation,
        )
    for attention, proj in heads.items():
        site = cap.sites.get((proj, "input"))
        if site is None:
            continue
        n = getattr(modules[attention], "n_heads", getattr(modules[attention], "num_heads", 1))
        values = _heads_view(site.matrix(), n)
        errors = _heads_view(site.error_matrix(), n)
        name = f"{attention}.heads"
        reports[name] = LayerDiagnosis(
            name, n, clone_blocks(values, errors, tol), [], dead_units(values), False
        )

    structure = _structure(model, cap, tol, site_blocks)
    manifold = _manifold(structure, cap.params, tol)
    verdict = None
    if stability and manifold.dimensions["normal"] > 0:
        verdict = _stability(
            model, inputs, targets, loss_fn, structure, mode, stability_dtype,
            lanczos_steps, lr, escape_steps, escape_eps, generator,
        )  # fmt: skip
    settings = {
        "mode": mode,
        "frozen_eps": frozen_eps,
        "frozen_fraction": frozen_fraction,
        "lanczos_steps": lanczos_steps,
        "rows": int(inputs.shape[0]),
    }
    return Diagnosis(cap.loss, tol, reports, manifold, verdict, settings)


def _stability(
    model, inputs, targets, loss_fn, structure, mode, dtype, steps, lr, escape_steps, eps, gen
) -> StabilityDiagnosis:
    work = copy.deepcopy(model).train(mode == "train")
    x = inputs
    if dtype is not None:
        work = work.to(dtype)
        x = inputs.to(dtype) if inputs.is_floating_point() else inputs
        targets = targets.to(dtype) if targets.is_floating_point() else targets
    s = analyse_stability(
        work,
        lambda m: model_loss(m, x, targets, loss_fn),
        steps,
        lr,
        gen,
        structure,
        escape_steps,
        0,
        eps,
    )
    spectrum, result = s.spectrum, s.escape
    escape = None
    if result is not None:
        escape = {
            "steps": escape_steps,
            "eps": eps,
            "rate": result.rate,
            "horizon_too_short": result.horizon_too_short,
            "distances": result.distances,
        }
    return StabilityDiagnosis(
        verdict=spectrum.verdict,
        lambda_min=spectrum.lambda_min,
        lambda_max=spectrum.lambda_max,
        residual_min=float(spectrum.residuals[0]),
        residual_max=float(spectrum.residuals[-1]),
        tolerance=spectrum.tolerance,
        removed=list(spectrum.removed),
        reduced_dimension=spectrum.reduced_dimension,
        ritz_values=spectrum.ritz_values.tolist(),
        lr=lr,
        predicted_rate_softest=s.predicted_rate_softest,
        predicted_rate=s.predicted_rate,
        required_steps=s.required_steps,
        escape=escape,
    )
