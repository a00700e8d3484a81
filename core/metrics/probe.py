"""The probe: one forward and one backward of a model on a fixed probe batch, with the metrics of
a preset computed for each of the model's declared layers.

An experiment builds a `Probe` once per (model, probe batch) and calls it at its cadence:

    probe = Probe(model, x, y, F.cross_entropy, ProbeSpec("default"), generator=g)
    record = probe()  # {"loss": ..., "accuracy": ..., "hidden1/effective_rank": ..., ...}

Protocol (improving on the paper's code; docs/metrics.md, "The probe"):
- the model runs in eval mode (BatchNorm uses its running statistics and does not update them,
  dropout is off); every module's own train/eval flag is restored afterwards;
- the loss gradients with respect to the declared layers' outputs come from `torch.autograd.grad`,
  so no parameter's `.grad` is touched (the paper's code accumulated into `.grad`);
- each layer output becomes a (rows, units) matrix by the flattening rule of
  `core.models.capture.unit_matrix`: (B, D) stays, (B, C, H, W) -> (B*H*W, C) (a row is one
  position of one image, a column one channel), (B, T, D) -> (B*T, D) (a row is one token);
- metrics that subsample rows (the ranks, non-Gaussianity) draw the rows once per layer from the
  caller's generator and reuse them at every call, so that the values follow the model and not the
  draw; ranks use the Gram matrix's eigenvalues;
- everything stays on the model's device; the values reach the host in one transfer at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.metrics import ranks, units
from core.metrics.partition import activation_slopes, partition_summary
from core.metrics.presets import PRESETS, Metric
from core.models import Layer
from core.models.capture import unit_matrix

LossOutput = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ProbeSpec:
    """Which metrics the probe computes (the `probe.*` keys of an experiment config)."""

    preset: str = (
        "default"  # one of core.metrics.PRESETS: default, paper, paper_bitflip, dohare2024
    )
    metrics: tuple[str, ...] = ()  # a subset of the preset's metrics ("a,b" works); () = all
    diagnose: bool = False  # also the clone partition and frozen units of core.diagnose per layer

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown probe preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        names = self.metrics.split(",") if isinstance(self.metrics, str) else self.metrics
        object.__setattr__(self, "metrics", tuple(n.strip() for n in names if n.strip()))
        unknown = [m for m in self.metrics if m not in PRESETS[self.preset]]
        if unknown:
            raise ValueError(
                f"metrics {', '.join(unknown)} are not in preset {self.preset!r}; "
                f"valid: {', '.join(PRESETS[self.preset])}"
            )
        if not isinstance(self.diagnose, bool):
            raise ValueError(f"probe diagnose must be true or false, got {self.diagnose!r}")

    def selected(self) -> dict[str, Metric]:
        """The metrics to compute, by name, in the preset's order."""
        preset = PRESETS[self.preset]
        return {k: m for k, m in preset.items() if not self.metrics or k in self.metrics}


class LayerView:
    """What the metrics read about one declared layer in one probe call; every per-layer
    statistic (spectra, column moments, zero fractions, mean |h|) is computed at most once and
    shared between the metrics that read it.

    `h`: activations (rows, units); `g_batch_mean`: d(batch-mean loss)/d h, same shape (None when
    no metric needs gradients); `batch_size`: B, so that B x g_batch_mean is d loss_b / d h for
    the image b of each row (per-sample gradients); `weight`: the weight of the layer's `incoming`
    module (None for block outputs); `pre`: the pre-activations (the input of the layer's
    activation module, same shape as h; None for block outputs or when no metric reads them) and
    `activation` its name.
    """

    SPECTRA = ("raw", "centred", "standardised", "svd")

    def __init__(
        self,
        h: torch.Tensor,
        g_batch_mean: torch.Tensor | None,
        batch_size: int,
        weight: torch.Tensor | None,
        row_index: Callable[[int | None], torch.Tensor | None],
        pre: torch.Tensor | None = None,
        activation: str | None = None,
    ) -> None:
        self.h = h
        self.g_batch_mean = g_batch_mean
        self.batch_size = batch_size
        self.weight = weight
        self.pre = pre
        self.activation = activation
        self._row_index = row_index
        self._cache: dict[tuple, object] = {}

    def _cached(self, key: tuple, compute: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def rows(self, k: int | None) -> torch.Tensor:
        """`h` restricted to this layer's fixed subsample of at most k rows (None: all rows)."""
        index = self._row_index(k)
        return self.h if index is None else self.h[index]

    def spectrum(self, k: int | None, kind: str = "raw") -> torch.Tensor:
        """Squared singular values of `rows(k)` (ranks.squared_singular_values): `raw` (Gram
        route), `centred` (covariance eigenvalues), `standardised` (correlation eigenvalues),
        `svd` (raw, from the singular values: no round-off floor)."""
        if kind not in self.SPECTRA:
            raise ValueError(f"unknown spectrum {kind!r}; valid: {', '.join(self.SPECTRA)}")
        options = {
            "raw": {},
            "centred": {"center": True},
            "standardised": {"standardize": True},
            "svd": {"via": "svd"},
        }[kind]
        return self._cached(
            ("spectrum", k, kind), lambda: ranks.squared_singular_values(self.rows(k), **options)
        )

    def moments(self) -> units.ColumnMoments:
        """Column means, centred scatter and gram of all rows of `h` (units.column_moments)."""
        return self._cached(("moments",), lambda: units.column_moments(self.h))

    def unit_statistics(self, ddof: int = 1) -> dict[str, torch.Tensor]:
        """mean_of_means, std_of_means, mean_of_stds, std_of_stds of all rows of `h`."""

        def compute() -> dict[str, torch.Tensor]:
            m = self.moments()
            return units.unit_statistics_of(m.mean, m.std(), ddof)

        return self._cached(("unit_statistics", ddof), compute)

    def zero_fractions(self, zero_tol: float) -> torch.Tensor:
        """Per-unit fraction of the rows of `h` that are zero (units.zero_fractions)."""
        return self._cached(("zero", zero_tol), lambda: units.zero_fractions(self.h, zero_tol))

    def mean_abs(self) -> torch.Tensor:
        """Per-unit mean |h| over all rows (units.mean_abs)."""
        return self._cached(("mean_abs",), lambda: units.mean_abs(self.h))

    def small_gradient_fractions(self, rel_tol: float, per_sample: bool) -> torch.Tensor:
        """Per-unit fraction of rows with |G_ij| / mu_j < rel_tol (units.small_gradient_fractions),
        G the per-sample (B x batch-mean) or the batch-mean loss gradient."""
        scale = self.batch_size if per_sample else 1.0
        return units.small_gradient_fractions(self.g_batch_mean, self.mean_abs(), rel_tol, scale)

    def flat_slope_fractions(self, eps: float) -> torch.Tensor:
        """Per-unit fraction of rows with |phi'(pre)| < eps (units.flat_slope_fractions)."""
        return self._cached(
            ("flat", eps),
            lambda: units.flat_slope_fractions(self.pre, self.activation, eps),
        )


class Probe:
    """Measures `model` on the fixed batch (x, y): `probe()` -> flat dict of floats.

    Keys: `"<layer>/<metric>"` for each layer of `select_layers(model, layers)` and each metric
    of `spec` (with `spec.diagnose`, also `core.metrics.partition.partition_summary`'s rows: the
    clone partition of the layer's values and errors and, for a layer whose module is an
    activation, its frozen units), plus whole-model scalars without a slash: `loss`, and
    `accuracy` (argmax over the
    output columns) when `loss_fn` returns a tensor, the output is (B, K > 1) and y holds integer
    labels. `loss_fn(output, y)` returns the batch-mean loss, or a mapping with the key `loss`
    (differentiated) and any other whole-model scalars to report instead (e.g. a masked accuracy).
    The loss must be the mean over the B samples of per-sample losses: per-sample gradients are
    B x its gradient. `generator` draws the row subsamples (once; see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], LossOutput],
        spec: ProbeSpec | None = None,
        *,
        generator: torch.Generator,
        layers: Sequence[str | type[nn.Module]] | None = None,
    ) -> None:
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.spec = spec if spec is not None else ProbeSpec()
        self.metrics = self.spec.selected()
        self.layers = select_layers(model, layers)
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names) or any("/" in n for n in names):
            raise ValueError(f"declared layer names must be unique and slash-free, got {names}")
        self.needs_grad = self.spec.diagnose or any(m.needs_grad for m in self.metrics.values())
        self.needs_pre = any(m.needs_pre for m in self.metrics.values())
        self.generator = generator
        self._row_indices: dict[tuple[str, int], torch.Tensor | None] = {}

    def __call__(self) -> dict[str, float]:
        outputs, inputs, grads, scalars = self._forward_backward()
        keys = list(scalars)
        values = [v.detach().double().reshape(()) for v in scalars.values()]
        diagnosis: dict[str, float] = {}
        with torch.no_grad():
            for layer in self.layers:
                pre = inputs.get(layer.name)
                view = self._view(
                    layer,
                    outputs[layer.name],
                    grads.get(layer.name),
                    pre if self.needs_pre and layer.activation is not None else None,
                )
                for key, metric in self.metrics.items():
                    if metric.needs_weight and view.weight is None:
                        continue
                    if metric.needs_pre and view.pre is None:
                        continue
                    keys.append(f"{layer.name}/{key}")
                    values.append(metric.compute(view).double().reshape(()))
                if self.spec.diagnose:
                    rows = self._partition(layer, view, pre)
                    diagnosis.update({f"{layer.name}/{k}": v for k, v in rows.items()})
        out = dict(zip(keys, torch.stack(values).tolist()))  # the one transfer to the host
        return {**out, **diagnosis}  # the partition's rows are host values already

    @staticmethod
    def _partition(layer: Layer, view: LayerView, pre: torch.Tensor | None) -> dict[str, float]:
        """The `diagnose` rows of one layer (`partition_summary`): frozen units where the layer's
        module is an activation (phi' by autograd at its recorded input), as `core.diagnose`."""
        slopes = None
        if isinstance(layer.module, ACTIVATION_TYPES) and pre is not None:
            slopes = activation_slopes(layer.module, unit_matrix(pre))
        return partition_summary(view.h, view.g_batch_mean, slopes)

    def _forward_backward(
        self,
    ) -> tuple[dict[str, torch.Tensor], ...]:
        """Layer outputs, the pre-activations of layers with an activation (when a metric reads
        them, or, with `diagnose`, the input of every layer whose module is an activation), the
        outputs' loss gradients and the whole-model scalars, in eval mode."""
        outputs: dict[str, torch.Tensor] = {}
        inputs: dict[str, torch.Tensor] = {}

        def recorder(name: str, keep_input: bool):
            def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                outputs[name] = output
                if keep_input:
                    inputs[name] = args[0].detach()

            return hook

        modes = [(m, m.training) for m in self.model.modules()]
        handles = [
            layer.module.register_forward_hook(
                recorder(
                    layer.name,
                    (self.needs_pre and layer.activation is not None)
                    or (self.spec.diagnose and isinstance(layer.module, ACTIVATION_TYPES)),
                )
            )
            for layer in self.layers
        ]
        try:
            self.model.eval()
            with torch.set_grad_enabled(self.needs_grad):
                out = self.model(self.x)
                scalars = self._scalars(out, self.loss_fn(out, self.y))
                grads = {}
                if self.needs_grad:
                    grads = self._gradients(scalars["loss"], outputs)
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes:
                module.training = training
        missing = [layer.name for layer in self.layers if layer.name not in outputs]
        if missing:
            raise RuntimeError(f"declared layers {missing} did not run in the model's forward")
        return outputs, inputs, grads, scalars

    def _scalars(self, out: torch.Tensor, result: LossOutput) -> dict[str, torch.Tensor]:
        if isinstance(result, torch.Tensor):
            scalars = {"loss": result}
            labels = not self.y.is_floating_point() and self.y.dim() == 1
            if labels and out.dim() == 2 and out.shape[1] > 1:
                scalars["accuracy"] = (out.argmax(dim=1) == self.y).double().mean()
            return scalars
        if "loss" not in result:
            raise ValueError(f"loss_fn returned keys {sorted(result)}; one must be 'loss'")
        if any("/" in k for k in result):
            raise ValueError(f"whole-model scalar names have no slash, got {sorted(result)}")
        return {k: torch.as_tensor(v, device=out.device) for k, v in result.items()}

    def _gradients(
        self, loss: torch.Tensor, outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        names = [layer.name for layer in self.layers if layer.name in outputs]
        if not all(outputs[n].requires_grad for n in names):
            raise ValueError(
                "the probe's gradient metrics need layer outputs that require grad; "
                "some parameters before each declared layer must have requires_grad=True"
            )
        grads = torch.autograd.grad(
            loss, [outputs[n] for n in names], allow_unused=True, materialize_grads=True
        )
        return dict(zip(names, grads))

    def _view(
        self,
        layer: Layer,
        output: torch.Tensor,
        grad: torch.Tensor | None,
        pre: torch.Tensor | None,
    ) -> LayerView:
        h = unit_matrix(output.detach())
        g = None if grad is None else unit_matrix(grad)
        incoming = layer.incoming
        weight = None if incoming is None else incoming.weight
        return LayerView(
            h,
            g,
            self.x.shape[0],
            weight,
            lambda k: self._rows(layer.name, h.shape[0], k, h.device),
            pre=None if pre is None else unit_matrix(pre),
            activation=layer.activation,
        )

    def _rows(self, name: str, n: int, k: int | None, device: torch.device) -> torch.Tensor | None:
        """The fixed subsample of k of the n rows of layer `name` (None: all rows), drawn once."""
        if k is None or n <= k:
            return None
        if (name, k) not in self._row_indices:
            pick = torch.randperm(n, generator=self.generator, device=self.generator.device)[:k]
            self._row_indices[name, k] = pick.sort().values.to(device)
        return self._row_indices[name, k]


ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink,
)  # fmt: skip
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)  # fmt: skip
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES = WEIGHT_TYPES + NORM_TYPES + ACTIVATION_TYPES  # the default layers of any module


def select_layers(
    model: nn.Module, layers: Sequence[str | type[nn.Module]] | None = None
) -> list[Layer]:
    """The layers measured on `model`, each named by its module path (`model.named_modules()`).

    `layers=None`: the model's `declared_layers()` when it has that method (the built-in models),
    else the output of every module of `LAYER_TYPES` (Linear, Conv*, the norms and the
    activations), in registration order. Otherwise a list of module paths (e.g. "blocks.0.act")
    and module types (every module of that type), in that order, duplicates dropped. The
    `Layer.activation` stays None (a module's activation need not be one of the models').
    """
    if layers is None:
        if hasattr(model, "declared_layers"):
            return list(model.declared_layers())
        layers = [LAYER_TYPES]
    modules = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for item in layers:
        if isinstance(item, str):
            if item not in modules or item == "":
                sample = ", ".join(n for n in list(modules)[1:6])
                raise ValueError(
                    f"no module at path {item!r} in the model; valid paths: {sample}, ..."
                )
            chosen.setdefault(item, modules[item])
        elif isinstance(item, type) or (
            isinstance(item, tuple) and all(isinstance(t, type) for t in item)
        ):
            for name, module in modules.items():
                if name and isinstance(module, item):
                    chosen.setdefault(name, module)
        else:
            raise TypeError(f"a layer is a module path or a module type, got {item!r}")
    if not chosen:
        raise ValueError(f"no layer of the model matches {list(layers)}")
    return [Layer(name=name, module=module) for name, module in chosen.items()]
