"""A study's parameter space against its experiment's `Config`: validation and grid counting.

A space is a flat dict whose keys are `Config` fields, nested dataclass fields as dotted keys
(`model.arch`), exactly the keys of `python -m core.experiments.<name> key=value`. Values are
constants or `ray.tune.grid_search([...])` markers (`{"grid_search": [...]}`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from core.experiments.overrides import field_types


def validate_keys(cls: type, keys: Iterable[str], context: str) -> None:
    """Raise ValueError naming every unknown key and listing the valid ones."""
    valid = list(field_types(cls))
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ValueError(
            f"{context}: unknown key(s) {', '.join(unknown)} for {cls.__module__}.{cls.__name__}; "
            f"valid keys: {', '.join(valid)}"
        )


def same_as(key: str) -> Any:
    """A space value that copies another key of the same trial (e.g. the clone's optimizer takes
    the base's grid value): tied axes, which a product grid cannot express."""
    from ray import tune

    return tune.sample_from(lambda config: config[key])


def first_point(space: Mapping[str, Any]) -> dict[str, Any]:
    """The first trial config of the space, every grid and `same_as` resolved as Tune does."""
    from ray.tune.search.variant_generator import generate_variants

    _, config = next(iter(generate_variants(dict(space))))
    return config


def is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"grid_search"}


def count_grid(space: Mapping[str, Any]) -> int:
    """Number of trials of a grid: the product of the grid axes' lengths."""
    return math.prod(len(v["grid_search"]) for v in space.values() if is_grid(v))
