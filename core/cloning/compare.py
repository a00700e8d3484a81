"""Checks of a clone: base-vs-clone equivalence, and the within-clone cloning score.

Both run the models in their current train/eval mode but leave every buffer as it was (a
train-mode BatchNorm normalises with the batch's statistics and its running statistics are put
back afterwards), and write no parameter's `.grad`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from core.models.capture import capture_layers, unit_matrix


def default_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer class targets, mean squared error otherwise."""
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(output, y.long())
    return F.mse_loss(output, y.reshape(output.shape).to(output.dtype))


@contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    """Every buffer (BatchNorm running statistics, batch counts) as it was on entry, on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _forward_backward(model, x, y, loss_fn):
    x = x.detach().clone().requires_grad_(True)
    with _buffers_restored(model), capture_layers(model) as record:
        out = model(x)
        loss = loss_fn(out, y)
        (input_grad,) = torch.autograd.grad(loss, x)
    return out.detach(), loss.detach(), input_grad, record


def compare(
    base: nn.Module,
    clone: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn=default_loss,
) -> dict[str, float]:
    """Max-abs differences between a base model and its clone on the batch (x, y).

    Keys: `output`, `loss`, `input_grad`, and for every declared layer `<layer>/forward` (clone
    activations vs. the base unit each clone copies), `<layer>/backward` (the clone's loss gradient
    w.r.t. the layer, times the width ratio E, vs. the base's: each of E clones carries 1/E of its
    base unit's gradient), and `<layer>` (the larger of the two). Both models run in their current
    mode (train-mode BatchNorm on batch statistics); their buffers are left unchanged.
    """
    out_b, loss_b, gx_b, rec_b = _forward_backward(base, x, y, loss_fn)
    out_c, loss_c, gx_c, rec_c = _forward_backward(clone, x, y, loss_fn)
    result = {
        "output": (out_b - out_c).abs().max().item(),
        "loss": (loss_b - loss_c).abs().item(),
        "input_grad": (gx_b - gx_c).abs().max().item(),
    }
    for layer in base.declared_layers():
        name = layer.name
        diffs = []
        for kind, rec_base, rec_clone in (
            ("forward", rec_b.acts, rec_c.acts),
            ("backward", rec_b.grads, rec_c.grads),
        ):
            hb, hc = unit_matrix(rec_base[name]), unit_matrix(rec_clone[name])
            ratio, rem = divmod(hc.shape[1], hb.shape[1])
            if rem:
                raise ValueError(f"layer {name}: clone width {hc.shape[1]} is not a multiple")
            expected = hb.repeat_interleave(ratio, dim=1)  # base unit k -> clones k*E .. k*E+E-1
            if kind == "backward":
                hc = hc * ratio
            diffs.append((expected - hc).abs().max().item())
            result[f"{name}/{kind}"] = diffs[-1]
        result[name] = max(diffs)
    return result


def _r2(h: torch.Tensor, factor: int) -> float:
    """1 - sum (h - block mean)^2 / sum (h - row's layer mean)^2 for a (rows, units) matrix; NaN
    where the total is 0 (every unit equal on every row: nothing to explain).

    Deviations are taken from each block's first clone before averaging (the same number in exact
    arithmetic), so that a block of identical floats has exactly zero within-block variance.
    """
    rows, units = h.shape
    h = h.double()
    blocks = h.reshape(rows, units // factor, factor)  # (rows, base units, clones)
    dev = blocks - blocks[:, :, :1]
    within = (dev - dev.mean(dim=2, keepdim=True)).pow(2).sum()
    total = (h - h.mean(dim=1, keepdim=True)).pow(2).sum()
    if total == 0:
        return float("nan")
    return 1.0 - (within / total).item()


def chance_corrected(r2: float, factor: int) -> float:
    """(E R^2 - 1) / (E - 1): 1 for a perfect clone, about 0 for clones that vary independently.

    E clones with independent values of equal variance leave (E - 1)/E of the variance within
    blocks, so R^2 ~ 1/E for a fully escaped clone (1/2 at E = 2); this maps that chance level to
    0 (and can go below it, down to -1/(E - 1) for clones anti-aligned within every block).
    """
    return (factor * r2 - 1.0) / (factor - 1.0)


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if v == v]
    return sum(defined) / len(defined) if defined else float("nan")


def cloning_score(
    clone: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=default_loss
) -> dict[str, float]:
    """The paper's cloning score, per declared layer, forward and backward, on the clone alone.

    R^2 = 1 - sum_{rows, units} (a - blockmean(a))^2 / sum_{rows, units} (a - layermean(a))^2,
    where a block is the clones of one base unit (units u with the same u // clone_factor), the
    layer mean is taken across all of the layer's units separately for each row (sample,
    position or token), and `a` is the layer's activation (`<layer>/r2_forward`) or the loss
    gradient w.r.t. it (`<layer>/r2_backward`). A perfect clone scores 1 and a fully escaped one
    about 1/E, so each key has its chance-corrected twin `<layer>/r2c_<direction>` =
    (E R^2 - 1) / (E - 1) (1 perfect, ~0 escaped). A layer whose units are all equal on every
    row (e.g. dead) has nothing to explain: NaN. `r2_mean` and `r2c_mean` average every layer
    and direction that is defined (the paper §B.1.2 average). This is a ratio of variances, as
    the paper defines it (its code computed a ratio of standard deviations). The clone runs in
    its current mode; its buffers and parameters' `.grad` are left unchanged.
    """
    factor = clone.cfg.clone_factor
    if factor == 1:
        raise ValueError("cloning_score needs a clone (clone_factor > 1)")
    _, _, _, record = _forward_backward(clone, x, y, loss_fn)
    r2 = {}
    for layer in clone.declared_layers():
        r2[f"{layer.name}/r2_forward"] = _r2(unit_matrix(record.acts[layer.name]), factor)
        r2[f"{layer.name}/r2_backward"] = _r2(unit_matrix(record.grads[layer.name]), factor)
    corrected = {
        key.replace("/r2_", "/r2c_"): chance_corrected(value, factor) for key, value in r2.items()
    }
    return {
        **r2,
        **corrected,
        "r2_mean": _nanmean(list(r2.values())),
        "r2c_mean": _nanmean(list(corrected.values())),
    }
