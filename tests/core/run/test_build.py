"""The builder: each optimizer spec gives the optimizer it names with its hyper-parameters."""

from __future__ import annotations

import pytest
import torch

from core.optim import ElementwiseAdam, NoisySGD
from core.run.build import build_optimizer
from core.run.specs import OptimizerSpec


@pytest.mark.parametrize(
    ("spec", "cls", "group"),
    [
        (
            OptimizerSpec("sgd", lr=0.5, momentum=0.25, weight_decay=0.1),
            torch.optim.SGD,
            {"lr": 0.5, "momentum": 0.25, "weight_decay": 0.1},
        ),
        (
            OptimizerSpec("adam", lr=0.5, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
            torch.optim.Adam,
            {"lr": 0.5, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1},
        ),
        (
            OptimizerSpec("adam", lr=0.5, adam_step="element", weight_decay=0.1),
            ElementwiseAdam,
            {"lr": 0.5, "weight_decay": 0.1},
        ),
        (
            OptimizerSpec("noisy_sgd", lr=0.5, sigma0=0.2, decay=0.9),
            NoisySGD,
            {"lr": 0.5, "momentum": 0.9},
        ),
    ],
)
def test_each_spec_builds_its_optimizer_with_its_hyper_parameters(spec, cls, group):
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = build_optimizer(spec, params, torch.Generator().manual_seed(0))
    assert type(optimizer) is cls
    assert {k: optimizer.param_groups[0][k] for k in group} == group
    if cls is NoisySGD:
        assert (optimizer.sigma0, optimizer.decay) == (0.2, 0.9)


def test_noisy_sgd_needs_a_generator():
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        build_optimizer(OptimizerSpec("noisy_sgd"), [torch.nn.Parameter(torch.zeros(1))])
