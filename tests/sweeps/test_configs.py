"""Validation of study spaces against an experiment's config dataclass, and grid counting."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray import tune

from sweeps.configs import count_grid, validate_keys


@dataclass(frozen=True)
class Inner:
    arch: str = "mlp"
    width: int = 4


@dataclass(frozen=True)
class Outer:
    lr: float = 0.1
    seed: int = 0
    model: Inner = field(default_factory=Inner)


def test_unknown_keys_are_named_with_the_valid_ones():
    validate_keys(Outer, ["lr", "model.width"], "study x")
    with pytest.raises(ValueError) as err:
        validate_keys(Outer, ["lr", "model.arhc", "sed"], "study x")
    message = str(err.value)
    assert message.startswith("study x: unknown key(s) model.arhc, sed")
    assert "valid keys: lr, seed, model.arch, model.width" in message


def test_count_grid_is_the_product_of_axes():
    space = {
        "a": tune.grid_search([1, 2, 3]),
        "b": tune.grid_search(["x", "y"]),
        "c": 7,
    }
    assert count_grid(space) == 6
    assert count_grid({"c": 1}) == 1
