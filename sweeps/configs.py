"""A study's parameter space: validation, its grid points and their stable identities.

A space is a flat dict whose keys are `Config` fields, nested dataclass fields as dotted keys
(`model.arch`), exactly the keys of `python -m core.experiments.<name> key=value`. Values are
constants, `ray.tune.grid_search([...])` markers (`{"grid_search": [...]}`) or `same_as(key)` ties.

A grid point is one resolved trial config of the space (every grid and tie resolved, as Tune
resolves them). Its identity, `point_id(point)`, is a hash of that flat dict: the same point gets
the same id in every run of the sweep, whatever Tune calls the trial, so that a point has one run
record (`<sweep>/runs/<point id>/`) and one MLflow run, however often it is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from core.run.config import field_types


def validate_keys(cls: type, keys: Iterable[str], context: str) -> None:
    """Raise ValueError naming every unknown key and listing the valid ones."""
    valid = list(field_types(cls))
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ValueError(
            f"{context}: unknown key(s) {', '.join(unknown)} for {cls.__module__}.{cls.__name__}; "
            f"valid keys: {', '.join(valid)}"
        )


class SameAs:
    """The value of another key of the same trial (see `same_as`)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, config: Any) -> Any:
        return config[self.key]


def same_as(key: str) -> Any:
    """A space value that copies another key of the same trial (e.g. the clone's optimizer takes
    the base's grid value): tied axes, which a product grid cannot express."""
    from ray import tune

    return tune.sample_from(SameAs(key))


def is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"grid_search"}


def count_grid(space: Mapping[str, Any]) -> int:
    """Number of trials of a grid: the product of the grid axes' lengths."""
    return math.prod(len(v["grid_search"]) for v in space.values() if is_grid(v))


def grid_points(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every trial config of the space, every grid and `same_as` resolved as Tune does."""
    from ray.tune.search.variant_generator import generate_variants

    return [config for _, config in generate_variants(dict(space))]


def first_point(space: Mapping[str, Any]) -> dict[str, Any]:
    """The first trial config of the space."""
    from ray.tune.search.variant_generator import generate_variants

    _, config = next(iter(generate_variants(dict(space))))
    return config


def point_id(point: Mapping[str, Any]) -> str:
    """The stable identity of a grid point: 12 hex digits of the SHA-256 of its canonical JSON."""
    text = json.dumps(point, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def canonical_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """The space as plain JSON values (ties as `{"same_as": key}`), comparable across runs."""
    from ray.tune.search.sample import Function

    def plain(value: Any) -> Any:
        if isinstance(value, Function) and isinstance(value.func, SameAs):
            return {"same_as": value.func.key}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"space value {value!r} is neither a constant, a grid nor same_as(key)")

    return {key: plain(value) for key, value in sorted(space.items())}
