"""How the image experiments score a classifier: the (masked) loss and accuracies of a batch (and
of a packed ensemble's batches), the evaluation of a whole split, and the metrics probe with that
loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.data import ImageData
from core.metrics import Probe, ProbeSpec


def class_remap(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A lookup table: global label -> position in `classes` (-1 for the other labels)."""
    remap = torch.full((num_classes,), -1, dtype=torch.int64, device=classes.device)
    remap[classes] = torch.arange(len(classes), device=classes.device)
    return remap


def masked_loss(
    out: torch.Tensor, y: torch.Tensor, classes: torch.Tensor | None, remap: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, masked correct, unmasked correct) of logits `out` (B, K) for labels `y` (B,).

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


def packed_masked_loss(
    out: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, remap: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per member, what `masked_loss` gives for its batch: (loss, masked correct,
    unmasked correct), each (N,), from logits `out` (N, B, K), labels `y` (N, B), each member's
    task classes `classes` (N, k) and label lookup `remap` (N, K)."""
    n, b, _ = out.shape
    correct_all = (out.argmax(dim=2) == y).sum(dim=1)
    logits = out.gather(2, classes[:, None, :].expand(n, b, -1))  # (N, B, k)
    target = remap.gather(1, y)  # (N, B)
    losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    return losses.view(n, b).mean(dim=1), (logits.argmax(dim=2) == target).sum(dim=1), correct_all


def classification_probe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: ProbeSpec,
    generator: torch.Generator,
    classes: torch.Tensor | None = None,
) -> Callable[[], dict[str, float]]:
    """`core.metrics.Probe` of `model` on the fixed batch (x, y), as the experiments log it.

    With `classes` the probe's loss is the masked loss of `masked_loss` and its scalars are
    `accuracy` (masked) and `accuracy_unmasked`. The probe's whole-model scalars are renamed
    `probe_<name>` (`probe_loss`, `probe_accuracy`, ...), so that they never collide with the
    running `loss` and `acc` logged at the same step and split. `generator` draws the probe's row
    subsamples.
    """
    loss_fn = F.cross_entropy
    if classes is not None:
        remap = class_remap(classes, model.cfg.num_classes)

        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
            loss, correct, correct_all = masked_loss(out, target, classes, remap)
            n = len(target)
            return {"loss": loss, "accuracy": correct / n, "accuracy_unmasked": correct_all / n}

    probe = Probe(model, x, y, loss_fn, spec, generator=generator)

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
