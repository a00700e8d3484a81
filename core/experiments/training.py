"""What the two image experiments (continual, cloning) share: the model and optimizer parts of
their configs, the device, the random state a checkpoint must carry, the (masked) loss, evaluation,
the metrics probe, and the on-device running loss/accuracy with its non-finite watch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.data import DATASETS, ImageData
from core.metrics import Probe, ProbeSpec
from core.models import ModelConfig

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

    `add` never synchronises with the host; `read` does, once per log point.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct x2
        self.count = 0
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)

    def add(
        self,
        step: int,
        loss: torch.Tensor,
        correct: torch.Tensor,
        correct_all: torch.Tensor,
        n: int,
    ) -> None:
        loss = loss.detach()
        self.sums += torch.stack([loss.double() * n, correct.double(), correct_all.double()])
        self.count += n
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)

    def read(self) -> tuple[dict[str, float], int | None]:
        """({loss, acc, acc_unmasked} means since the last reset, first non-finite step or None)."""
        loss_sum, correct, correct_all = self.sums.tolist()
        first_bad = int(self.first_bad)
        n = max(self.count, 1)
        means = {"loss": loss_sum / n, "acc": correct / n, "acc_unmasked": correct_all / n}
        return means, (first_bad if first_bad >= 0 else None)
