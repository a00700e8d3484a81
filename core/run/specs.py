"""The config specs every experiment shares: the same key means the same thing everywhere.

Each experiment's `Config` has the fields `model` (`ModelSpec`), `optimizer` (`OptimizerSpec`),
`cbp` (`CBPSpec`), `redo` (`ReDoSpec`) and `shrink_perturb` (`ShrinkPerturbSpec`); L2 is
`optimizer.weight_decay`. Every spec validates its own values when it is built (in `__post_init__`,
so a bad value fails while the command line or a sweep's grid point is parsed, before any data is
read), naming the field and listing the valid values (`core.run.config` prefixes the key's
path: `cbp.util_type='contrib'; valid: contribution, ...`). `core.run.build` turns the specs into an
optimizer and the interventions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.models import ModelConfig
from core.models.config import ARCHS, MODEL_ACTIVATIONS, NORMS
from core.optim import ROUNDINGS, UTIL_TYPES
from core.run.config import field_docs

OPTIMIZERS = ("sgd", "adam", "noisy_sgd")
ADAM_STEPS = ("tensor", "element")


def check_choice(key: str, value: Any, valid: Iterable[Any]) -> None:
    """ValueError `key=value; valid: ...` unless `value` is one of `valid`."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"{key}={value!r}; valid: {', '.join(map(str, valid))}")


def check_range(
    key: str,
    value: float,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """ValueError naming `key` unless `value` lies in the interval from `low` to `high`."""
    above = value > low if low_open else value >= low
    below = True if high is None else (value < high if high_open else value <= high)
    if not (above and below):
        left = "(" if low_open else "["
        right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise ValueError(f"{key}={value!r}; valid: {left}{low}, {right}")


_MODEL_DOCS = field_docs(ModelConfig)  # the model.* keys' docs: ModelConfig's field comments

# ModelConfig without the fields the data decides (input shape, classes) and the clone factor that
# `core.cloning.expand` sets: the `model.*` keys. Derived from ModelConfig so the two never drift
# apart; `None` means "the paper's default for the arch".
_ModelSpecBase = dataclasses.make_dataclass(
    "_ModelSpecBase",
    [
        (
            f.name,
            f.type,
            dataclasses.field(
                default="cnn" if f.name == "arch" else f.default,
                metadata={"doc": _MODEL_DOCS.get(f.name, "")},
            ),
        )
        for f in dataclasses.fields(ModelConfig)
        if f.name not in ("in_shape", "num_classes", "clone_factor")
    ],
    frozen=True,
)

# an input big enough for every patch size: the spec checks what does not depend on the data
_ANY_IMAGE = (1, 1 << 16, 1 << 16)


@dataclass(frozen=True)
class ModelSpec(_ModelSpecBase):
    """The model (`model.*`): a `core.models.ModelConfig` without in_shape, num_classes and
    clone_factor, which the data and the cloning decide."""

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, ARCHS)
        if self.activation is not None:
            check_choice("activation", self.activation, MODEL_ACTIVATIONS)
        if self.norm is not None:
            check_choice("norm", self.norm, NORMS)
        self.model_config(_ANY_IMAGE, 1)  # ModelConfig's own checks (arch-specific fields, ...)

    def model_config(self, in_shape: tuple[int, ...], num_classes: int) -> ModelConfig:
        """The ModelConfig of this spec for inputs of `in_shape` and `num_classes` outputs."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return ModelConfig(in_shape=tuple(in_shape), num_classes=num_classes, **values)


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer (`optimizer.*`): torch SGD, Adam, or `core.optim.NoisySGD` (paper §5)."""

    name: str = "sgd"  # sgd | adam | noisy_sgd
    lr: float = 0.01  # learning rate
    momentum: float = 0.9  # sgd and noisy_sgd momentum (the reference configs use 0.9)
    weight_decay: float = 0.0  # L2: weight_decay * p added to the gradient (coupled, as in torch)
    betas: tuple[float, float] = (0.9, 0.999)  # adam: moment decays
    eps: float = 1e-8  # adam: denominator offset
    sigma0: float = 0.01  # noisy_sgd: noise std relative to each tensor's gradient norm at step 0
    decay: float = 0.99  # noisy_sgd: sigma_t = sigma0 * decay**t, t counting optimizer steps
    adam_step: str = "tensor"  # adam: one step count per tensor (torch) | per element (element)

    def __post_init__(self) -> None:
        check_choice("name", self.name, OPTIMIZERS)
        check_choice("adam_step", self.adam_step, ADAM_STEPS)
        check_range("lr", self.lr, 0.0)
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        for i, beta in enumerate(self.betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0)
        check_range("eps", self.eps, 0.0, low_open=True)
        check_range("sigma0", self.sigma0, 0.0)
        check_range("decay", self.decay, 0.0, 1.0, high_open=False)


@dataclass(frozen=True)
class CBPSpec:
    """Continual Backprop (`cbp.*`, `core.optim.ContinualBackprop`) after every optimizer step."""

    enabled: bool = False  # run CBP's generate-and-test after each optimizer step
    replacement_rate: float = 1e-4  # fraction of mature units replaced per step (rho)
    decay: float = 0.99  # running-average decay of the utilities (eta)
    maturity: int = 100  # steps before a unit may be replaced (M)
    util_type: str = "contribution"  # the utility (core.optim.UTIL_TYPES)
    rounding: str = "carry"  # carry: fractions carried exactly | bernoulli (Dohare's code)
    bias_correction: bool = True  # fold a replaced unit's mean activation into the next bias

    def __post_init__(self) -> None:
        check_choice("util_type", self.util_type, UTIL_TYPES)
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_range("replacement_rate", self.replacement_rate, 0.0, 1.0, high_open=False)
        check_range("decay", self.decay, 0.0, 1.0)
        check_range("maturity", self.maturity, 0)


@dataclass(frozen=True)
class ReDoSpec:
    """ReDo (`redo.*`, `core.optim.ReDo`): recycle dormant units every `period` steps."""

    enabled: bool = False  # run ReDo after each optimizer step
    threshold: float = 0.1  # a unit whose dormancy score is <= threshold is re-initialised (tau)
    period: int = 1000  # optimizer steps between two recycling passes

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0)
        check_range("period", self.period, 1)


@dataclass(frozen=True)
class ShrinkPerturbSpec:
    """Shrink-and-perturb (`shrink_perturb.*`, `core.optim.ShrinkPerturb`) after each step:
    p <- (1 - shrink) p + noise_std * N(0, I)."""

    enabled: bool = False  # run shrink-and-perturb after each optimizer step
    shrink: float = 0.0  # fraction of every weight removed per step (alone: decoupled L2)
    noise_std: float = 0.0  # std of the Gaussian noise added to every weight per step

    def __post_init__(self) -> None:
        check_range("shrink", self.shrink, 0.0, 1.0)
        check_range("noise_std", self.noise_std, 0.0)


MATMUL_PRECISIONS = ("highest", "tf32")
AUTOCASTS = ("none", "bf16")


@dataclass(frozen=True)
class PrecisionSpec:
    """Precision and kernels of the training step (`precision.*`, `core.run.precision`;
    docs/precision.md: what each option does to clone exactness). The defaults are plain fp32."""

    matmul: str = "highest"  # highest: fp32 | tf32: CUDA matmuls and convolutions in TF32
    autocast: str = "none"  # none | bf16: the training forward and loss under bf16 autocast
    channels_last: bool = False  # 4-D weights and training inputs in channels-last memory format
    compile: bool = False  # the training forward through torch.compile

    def __post_init__(self) -> None:
        check_choice("matmul", self.matmul, MATMUL_PRECISIONS)
        check_choice("autocast", self.autocast, AUTOCASTS)
