"""Validation of study spaces against an experiment's config dataclass, and grid counting."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pytest
from ray import tune

from sweeps.configs import (
    canonical_space,
    count_grid,
    grid_points,
    point_id,
    same_as,
    validate_keys,
)


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


def test_grid_points_resolve_ties_and_ids_are_stable_and_distinct():
    space = {
        "optimizer.name": tune.grid_search(["sgd", "adam"]),
        "seed": tune.grid_search([0, 1]),
        "clone_optimizer.name": same_as("optimizer.name"),
        "steps": 10,
    }
    points = grid_points(space)
    assert len(points) == 4
    assert all(p["clone_optimizer.name"] == p["optimizer.name"] for p in points)
    ids = [point_id(p) for p in points]
    assert len(set(ids)) == 4 and all(len(i) == 12 for i in ids)
    # the id is the hash of the point's canonical JSON: independent of key order, and the same
    # value computed by hand here
    point = {"seed": 1, "optimizer.name": "adam", "steps": 10, "clone_optimizer.name": "adam"}
    text = '{"clone_optimizer.name":"adam","optimizer.name":"adam","seed":1,"steps":10}'
    assert point_id(point) == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert point_id(point) in ids
    assert point_id(dict(reversed(list(point.items())))) == point_id(point)


def test_canonical_space_is_plain_json_and_names_ties():
    space = {"b": tune.grid_search([1, 2]), "a": same_as("b"), "c": (1, 2)}
    canonical = canonical_space(space)
    assert canonical == {"a": {"same_as": "b"}, "b": {"grid_search": [1, 2]}, "c": [1, 2]}
    assert json.loads(json.dumps(canonical)) == canonical
    assert canonical_space({**space}) == canonical  # the same in every run (no function address)
    with pytest.raises(TypeError, match="neither a constant, a grid nor same_as"):
        canonical_space({"x": tune.uniform(0, 1)})
