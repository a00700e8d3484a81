"""Checks of a clone: base-vs-clone equivalence, and the within-clone cloning score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.capture import capture_layers, unit_matrix


def default_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer class targets, mean squared error otherwise."""
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(output, y.long())
    return F.mse_loss(output, y.reshape(output.shape).to(output.dtype))


def _forward_backward(model, x, y, loss_fn):
    x = x.detach().clone().requires_grad_(True)
    with capture_layers(model) as record:
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
    mode; in train mode BatchNorm running statistics update as in any train-mode forward.
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
    """1 - sum (h - block mean)^2 / sum (h - layer mean)^2 for a (rows, units) matrix.

    Deviations are taken from each block's first clone before averaging (the same number in exact
    arithmetic), so that a block of identical floats has exactly zero within-block variance.
    """
    rows, units = h.shape
    blocks = h.reshape(rows, units // factor, factor)  # (rows, base units, clones)
    dev = blocks - blocks[:, :, :1]
    within = (dev - dev.mean(dim=2, keepdim=True)).pow(2).sum()
    total = (h - h.mean(dim=1, keepdim=True)).pow(2).sum()
    if total == 0:
        return 1.0  # every unit identical: within-block variance is 0 too
    return 1.0 - (within / total).item()


def cloning_score(
    clone: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=default_loss
) -> dict[str, float]:
    """The paper's cloning score, per declared layer, forward and backward, on the clone alone.

    R^2 = 1 - sum_{rows, units} (a - blockmean(a))^2 / sum_{rows, units} (a - layermean(a))^2,
    where a block is the clones of one base unit (units u with the same u // clone_factor), the
    layer mean is taken across all of the layer's units per row (sample, position or token), and
    `a` is the layer's activation (`<layer>/r2_forward`) or the loss gradient w.r.t. it
    (`<layer>/r2_backward`). A perfect clone scores 1; `r2_mean` averages every layer and
    direction. Unlike the reference code this is a ratio of variances (paper_spec §2.10, §4.5).
    """
    factor = clone.cfg.clone_factor
    if factor == 1:
        raise ValueError("cloning_score needs a clone (clone_factor > 1)")
    _, _, _, record = _forward_backward(clone, x, y, loss_fn)
    scores = {}
    for layer in clone.declared_layers():
        scores[f"{layer.name}/r2_forward"] = _r2(unit_matrix(record.acts[layer.name]), factor)
        scores[f"{layer.name}/r2_backward"] = _r2(unit_matrix(record.grads[layer.name]), factor)
    scores["r2_mean"] = sum(scores.values()) / len(scores)
    return scores
