"""The paper's studies, one module each.

A study module defines `EXPERIMENT` (the `core.experiments` module its trials run), `SCALES`,
`base_config()` (the constants every trial shares) and `param_space(scale)` (the grid axes, as
`ray.tune.grid_search`), and `resources(scale)` (a trial's CPU/GPU share). Its docstring gives the
command, the cost and what the result should show.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STUDIES = ("cloning_noise", "cloning_dropout", "continual", "bitflip")


def get_study(name: str) -> ModuleType:
    """The study module `name`; an unknown name raises with the list of studies."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    return importlib.import_module(f"sweeps.studies.{name}")


def check_scale(study: ModuleType, scale: str) -> None:
    if scale not in study.SCALES:
        name = study.__name__.rsplit(".", 1)[-1]
        raise ValueError(f"study {name} has no scale {scale!r}; scales: {', '.join(study.SCALES)}")
