"""NoisySGD: zero noise is torch SGD bit for bit; the noise has the stated variance; resume."""

import copy
import math

import pytest
import torch
from torch import nn

from core.optim import NoisySGD, noise_size


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 7, generator=g)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"momentum": 0.5, "dampening": 0.1},
    ],
)
def test_zero_noise_is_torch_sgd_bit_for_bit(kwargs):
    a, b = _net(), _net()
    _train(a, torch.optim.SGD(a.parameters(), lr=0.05, **kwargs), 30)
    g = torch.Generator().manual_seed(0)
    noisy = NoisySGD(b.parameters(), lr=0.05, sigma0=0.0, decay=0.9, generator=g, **kwargs)
    _train(b, noisy, 30)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_generator_is_required():
    with pytest.raises(TypeError, match="torch.Generator"):
        NoisySGD(_net().parameters(), lr=0.05, sigma0=0.1, generator=None)


def test_noise_variance_matches_sigma_decay_and_gradient_norm():
    """d_p = g + sigma0 lambda^t ||g|| xi: with lr = 1 the step is -d_p, so the residual
    -(step) - g must have per-coordinate variance (sigma0 lambda^t ||g||)^2 and mean 0."""
    n, sigma0, decay = 40_000, 0.3, 0.8
    p = nn.Parameter(torch.zeros(n, dtype=torch.float64))
    grad = torch.linspace(-1.0, 1.0, n, dtype=torch.float64) * 1e-2
    opt = NoisySGD(
        [p], lr=1.0, sigma0=sigma0, decay=decay, generator=torch.Generator().manual_seed(3)
    )
    norm = float(grad.norm())
    for t in range(4):
        before = p.detach().clone()
        p.grad = grad.clone()
        opt.step()
        residual = (before - p.detach()) - grad
        expected = (sigma0 * decay**t * norm) ** 2
        # the sample variance of n normals has relative standard deviation sqrt(2 / n) = 0.7%
        assert residual.var().item() == pytest.approx(expected, rel=6 * math.sqrt(2 / n))
        assert abs(residual.mean().item()) < 6 * math.sqrt(expected / n)


def test_decay_zero_is_a_single_noisy_step():
    p = nn.Parameter(torch.zeros(10))
    opt = NoisySGD([p], lr=1.0, sigma0=1.0, decay=0.0, generator=torch.Generator().manual_seed(0))
    assert opt.sigma() == 1.0
    p.grad = torch.ones(10)
    opt.step()
    assert opt.sigma() == 0.0
    before = p.detach().clone()
    opt.step()
    assert torch.equal(p.detach(), before - 1.0)


def test_noise_is_drawn_in_blocks_of_16_from_the_generator():
    """One step draws noise_size(total) normals: the stream position depends on steps only."""
    assert [noise_size(n) for n in (1, 16, 17, 116)] == [16, 16, 32, 128]
    model = _net()
    g = torch.Generator().manual_seed(5)
    opt = NoisySGD(model.parameters(), lr=0.1, sigma0=0.1, generator=g)
    _train(model, opt, 3)
    total = sum(p.numel() for p in model.parameters())
    reference = torch.Generator().manual_seed(5)
    torch.randn(3, noise_size(total), generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())


def test_state_dict_resumes_the_same_trajectory():
    def optimizer(model, seed):
        generator = torch.Generator().manual_seed(seed)
        return NoisySGD(
            model.parameters(), lr=0.05, sigma0=0.1, decay=0.95, momentum=0.9, generator=generator
        )

    a, b = _net(), _net()
    opt_a = optimizer(a, 7)
    _train(a, opt_a, 5)
    b.load_state_dict(a.state_dict())
    opt_b = optimizer(b, 99)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if saved and loaded
    _train(a, opt_a, 5)
    _train(b, opt_b, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
