"""What the two image experiments (continual, cloning) share: the config fields common to both
(`TrainingConfig`, which each experiment's `Config` extends), the run's start (device, config.json,
data, seeded generators) and its status rules, the random state a checkpoint must carry, the
(masked) loss, evaluation, the metrics probe, and the on-device running loss/accuracy with its
non-finite watch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.data import DATASETS, ImageData, SyntheticSpec, load_images
from core.metrics import Probe, ProbeSpec
from core.models import ModelConfig
from core.records import RunRecord

Dataset = Literal[DATASETS]  # the dataset names core.data knows

# ModelConfig without the fields the dataset decides (input shape, classes) and the clone factor
# that `core.cloning.expand` sets: the `model.*` keys of an experiment config. Derived from
# ModelConfig so that the two never drift apart; every `None` means "the paper's default".
ModelSpec = dataclasses.make_dataclass(
    "ModelSpec",
    [
        (f.name, f.type, dataclasses.field(default="cnn" if f.name == "arch" else f.default))
        for f in dataclasses.fields(ModelConfig)
        if f.name not in ("in_shape", "num_classes", "clone_factor")
    ],
    frozen=True,
)
ModelSpec.__module__ = __name__
ModelSpec.__doc__ = "A ModelConfig without in_shape and num_classes (see core.models.ModelConfig)."


def model_config(spec: ModelSpec, data: ImageData) -> ModelConfig:
    """The ModelConfig of `spec` for images of `data` (its shape and class count)."""
    return ModelConfig(
        in_shape=data.shape, num_classes=data.num_classes, **dataclasses.asdict(spec)
    )


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer: torch SGD, torch Adam, or core.optim.NoisySGD (paper_spec §5)."""

    name: Literal["sgd", "adam", "noisy_sgd"] = "sgd"
    lr: float = 0.01  # learning rate
    momentum: float = 0.9  # sgd and noisy_sgd momentum (the reference configs use 0.9)
    weight_decay: float = 0.0  # L2 penalty added to the gradient
    sigma0: float = 0.01  # noisy_sgd: noise std relative to each tensor's gradient norm at step 0
    decay: float = 0.99  # noisy_sgd: sigma_t = sigma0 * decay**t, t counting optimizer steps


@dataclass(frozen=True)
class TrainingConfig:
    """The `key=value` fields both image experiments share (docs/experiments.md).

    Each experiment's `Config` extends it with its own fields (continual learning also sets its
    own `dataset` and `optimizer` defaults); the keys are the same flat names in both.
    """

    dataset: Dataset = "cifar10"  # the image dataset (docs/data.md)
    data_root: str | None = None  # folder holding the datasets (None: $LOP_DATA, else ./data)
    download: bool = False  # fetch a missing dataset (needs network access)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)  # dataset=synthetic only
    augment: bool = True  # the dataset's training augmentation (crop, flip; jitter, rotation)
    model: ModelSpec = field(default_factory=ModelSpec)  # architecture (None: paper default)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)  # the (base) model's
    batch_size: int = 128  # training mini-batch
    log_every: int | None = None  # steps between log points (None: one epoch)
    probe: ProbeSpec = field(default_factory=ProbeSpec)  # metrics probe options
    probe_every: int = 5  # probe cadence in epochs (continual: in task_unit); also at phase ends
    probe_size: int = 500  # stratified probe batch size (train and evaluation split)
    checkpoint_every: int = 2000  # steps between checkpoints (taken at the next log point)
    seed: int = 0  # seeds the model, class order, batch order, augmentation, noise, dropout
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    # integer fields that must be >= 1 (an experiment's Config adds its own)
    positive_fields: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "probe_every",
        "probe_size",
        "checkpoint_every",
    )

    def __post_init__(self) -> None:
        small = [k for k in self.positive_fields if getattr(self, k) < 1]
        if self.log_every is not None and self.log_every < 1:
            small.append("log_every")
        if small:
            raise ValueError(f"{', '.join(small)} must be >= 1")


def run_recorded(
    train: Callable[[Any, RunRecord, bool], dict], cfg: Any, sink: RunRecord, progress: bool
) -> dict:
    """`train(cfg, sink, progress)` under the record's status rules.

    A completed or diverged record returns its summary without training; an exception marks the
    record `failed` with the exception as the reason and propagates.
    """
    if sink.status in ("completed", "diverged"):
        return sink.status_info["summary"]
    try:
        return train(cfg, sink, progress)
    except Exception as err:
        sink.set_status("failed", f"{type(err).__name__}: {err}")
        raise


def open_run(cfg: TrainingConfig, sink: RunRecord) -> tuple[torch.device, ImageData]:
    """Resolve the device, write the record's config.json, load the data onto the device."""
    device = resolve_device(cfg.device)
    sink.write_config(cfg, device=str(device))
    data = load_images(cfg.dataset, cfg.data_root, cfg.download, cfg.synthetic, device)
    return device, data


def seeded_generators(
    seed: int, device: torch.device, names: tuple[str, ...]
) -> dict[str, torch.Generator]:
    """One generator on `device` per name, the i-th (from 0) seeded with `seed + i + 1`."""
    return {name: torch.Generator(device).manual_seed(seed + i + 1) for i, name in enumerate(names)}


def build_optimizer(
    spec: OptimizerSpec, params, generator: torch.Generator | None = None
) -> torch.optim.Optimizer:
    """The optimizer of `spec` over `params` (tensors or parameter groups with their own lr).

    `generator` draws noisy SGD's noise and must be given for `noisy_sgd`.
    """
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "noisy_sgd":
        from core.optim import NoisySGD

        if generator is None:
            raise ValueError("noisy_sgd needs a torch.Generator for its noise")
        return NoisySGD(
            params,
            lr=spec.lr,
            sigma0=spec.sigma0,
            decay=spec.decay,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            generator=generator,
        )
    raise ValueError(f"unknown optimizer {spec.name!r}; valid: sgd, adam, noisy_sgd")


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def random_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """The state of the given generators and of torch's global RNGs (which dropout draws from)."""
    state = {name: g.get_state() for name, g in generators.items()}
    state["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda{i}"] = s
    return state


def set_random_state(generators: dict[str, torch.Generator], state: dict) -> None:
    """Restore what `random_state` saved."""
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [state[f"torch_cuda{i}"] for i in range(torch.cuda.device_count())]
        torch.cuda.set_rng_state_all(cuda)


def class_remap(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A lookup table: global label -> position in `classes` (-1 for the other labels)."""
    remap = torch.full((num_classes,), -1, dtype=torch.int64, device=classes.device)
    remap[classes] = torch.arange(len(classes), device=classes.device)
    return remap


def masked_loss(
    out: torch.Tensor, y: torch.Tensor, classes: torch.Tensor | None, remap: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, masked correct, unmasked correct) of logits `out` for labels `y`.

    With `classes`, the loss and the masked accuracy use only the logits of `classes`
    (cross-entropy over them, targets remapped by `remap`); the unmasked accuracy is the argmax over
    all logits. Without `classes` both accuracies are the plain argmax accuracy.
    """
    correct_all = (out.argmax(dim=1) == y).sum()
    if classes is None:
        return F.cross_entropy(out, y), correct_all, correct_all
    logits = out[:, classes]  # (B, k): the task's classes
    target = remap[y]
    loss = F.cross_entropy(logits, target)
    return loss, (logits.argmax(dim=1) == target).sum(), correct_all


def make_probe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: ProbeSpec,
    seed: int,
    classes: torch.Tensor | None = None,
) -> Callable[[], dict[str, float]]:
    """`core.metrics.Probe` of `model` on the fixed batch (x, y), as the experiments log it.

    With `classes` the probe's loss is the masked loss of `masked_loss` and its scalars are
    `accuracy` (masked) and `accuracy_unmasked`. The probe's whole-model scalars are renamed
    `probe_<name>` (`probe_loss`, `probe_accuracy`, ...), so that they never collide with the
    running `loss` and `acc` logged at the same step and split. `seed` seeds the generator that
    draws the probe's row subsamples (once per probe, so a resumed run draws the same rows).
    """
    loss_fn = F.cross_entropy
    if classes is not None:
        remap = class_remap(classes, model.cfg.num_classes)

        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
            loss, correct, correct_all = masked_loss(out, target, classes, remap)
            n = len(target)
            return {"loss": loss, "accuracy": correct / n, "accuracy_unmasked": correct_all / n}

    probe = Probe(model, x, y, loss_fn, spec, generator=torch.Generator().manual_seed(seed))

    def measure() -> dict[str, float]:
        return {(k if "/" in k else f"probe_{k}"): v for k, v in probe().items()}

    return measure


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> dict[str, float]:
    """loss, acc and acc_unmasked of `model` in eval mode on uint8 images `x` (see masked_loss)."""
    was_training = model.training
    model.eval()
    remap = None if classes is None else class_remap(classes, data.num_classes)
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        loss, correct, correct_all = masked_loss(model(data.inputs(xb)), yb, classes, remap)
        totals += torch.stack([loss.double() * len(yb), correct.double(), correct_all.double()])
    model.train(was_training)
    loss_sum, correct, correct_all = (totals / len(x)).tolist()
    return {"loss": loss_sum, "acc": correct, "acc_unmasked": correct_all}


class RunningStats:
    """Loss and accuracy summed on the device between log points, and the first non-finite step.

    `add` never synchronises with the host and costs five small device operations; `read` does,
    once per log point. The first non-finite step is found without a per-step comparison: a sum
    that has absorbed a non-finite loss stays non-finite (inf and nan propagate through any
    addition), so counting the steps after which the loss sum is still finite locates it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=self.device)

        self.loss_sum = zero(torch.float64)  # sum of loss x batch size
        self.correct = zero(torch.int64)  # masked correct predictions
        self.correct_all = zero(torch.int64)  # unmasked correct predictions
        self.finite_steps = zero(torch.int64)  # steps after which loss_sum was finite
        self.first_step: int | None = None  # the step of the first `add` since the reset
        self.steps = 0
        self.count = 0

    def add(
        self,
        step: int,
        loss: torch.Tensor,
        correct: torch.Tensor,
        correct_all: torch.Tensor,
        n: int,
    ) -> None:
        """Add the step's mean loss over `n` samples and its correct counts; steps are
        consecutive between resets."""
        if self.first_step is None:
            self.first_step = step
        assert step == self.first_step + self.steps, "RunningStats.add skipped a step"
        self.loss_sum.add_(loss.detach(), alpha=n)  # float64: exact products, as loss.double() * n
        self.correct.add_(correct)
        self.correct_all.add_(correct_all)
        self.finite_steps.add_(torch.isfinite(self.loss_sum))
        self.steps += 1
        self.count += n

    def read(self) -> tuple[dict[str, float], int | None]:
        """({loss, acc, acc_unmasked} means since the last reset, first non-finite step or None)."""
        counts = (self.correct, self.correct_all, self.finite_steps)
        totals = torch.stack([self.loss_sum, *(c.double() for c in counts)]).tolist()
        loss_sum, correct, correct_all, finite_steps = totals
        n = max(self.count, 1)
        means = {"loss": loss_sum / n, "acc": correct / n, "acc_unmasked": correct_all / n}
        if finite_steps == self.steps:
            return means, None
        return means, self.first_step + int(finite_steps)
