"""ElementwiseAdam: torch Adam while nothing is reset; a reset element restarts its bias
correction (its next update is about lr, not ~3x lr as with a per-tensor step count)."""

import math

import pytest
import torch
from torch import nn

from core.optim import ElementwiseAdam, reset_optimizer_state


def _pair(weight_decay: float = 0.0):
    torch.manual_seed(0)
    a = nn.Linear(5, 3).double()
    b = nn.Linear(5, 3).double()
    b.load_state_dict(a.state_dict())
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    return a, torch.optim.Adam(a.parameters(), **kw), b, ElementwiseAdam(b.parameters(), **kw)


def _step(model, opt, x):
    opt.zero_grad()
    model(x).sin().sum().backward()
    opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_without_resets_it_is_torch_adam(weight_decay):
    a, opt_a, b, opt_b = _pair(weight_decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = torch.randn(7, 5, generator=g, dtype=torch.float64)
        _step(a, opt_a, x)
        _step(b, opt_b, x)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-14, rtol=0)
    assert opt_b.state[b.weight]["step"].shape == b.weight.shape


def test_a_reset_element_restarts_its_bias_correction():
    """After t = 5000 steps of a constant gradient, zero the state of one weight (as CBP does):
    its next update is lr * g / (|g| + eps) = lr (fresh Adam's first step) with per-element
    steps, and lr * sqrt(1 - beta2^t) (1 - beta1) / ((1 - beta1^t) sqrt(1 - beta2)) ~ 3.16 lr
    with torch Adam's per-tensor step, here t = 5001 (beta = 0.9, 0.999)."""
    lr, t = 1e-3, 5001
    for cls, expected in (
        (ElementwiseAdam, 1.0),
        (torch.optim.Adam, math.sqrt(1 - 0.999**t) * 0.1 / ((1 - 0.9**t) * math.sqrt(0.001))),
    ):
        p = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        opt = cls([p], lr=lr, eps=1e-12)
        for _ in range(t - 1):
            p.grad = torch.ones(4, dtype=torch.float64)
            opt.step()
        reset_optimizer_state(opt, p, torch.tensor([2]))
        before = p.detach().clone()
        p.grad = torch.ones(4, dtype=torch.float64)
        opt.step()
        moved = (before - p.detach()) / lr
        assert moved[2].item() == pytest.approx(expected, rel=1e-6)
        assert moved[0].item() == pytest.approx(1.0, rel=1e-3)  # untouched: steady state
    assert expected == pytest.approx(3.16, abs=0.01)


def test_state_dict_round_trip_keeps_per_element_steps():
    a, _, b, opt_b = _pair()
    x = torch.randn(3, 5, dtype=torch.float64)
    _step(b, opt_b, x)
    reset_optimizer_state(opt_b, b.weight, (slice(None), 1))
    saved = opt_b.state_dict()
    fresh = ElementwiseAdam(a.parameters(), lr=1e-2, betas=(0.9, 0.99))
    a.load_state_dict(b.state_dict())
    fresh.load_state_dict(saved)
    steps = fresh.state[a.weight]["step"]
    assert steps.dtype == torch.float64 and steps[:, 1].sum() == 0 and steps[:, 0].sum() == 3
