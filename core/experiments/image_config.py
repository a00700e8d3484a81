"""The config fields both image experiments (continual, cloning) share, under the same keys:
`ImageConfig`, which each experiment's `Config` extends (docs/experiments.md)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import torch

from core.data import DATASETS, SyntheticSpec
from core.metrics import ProbeSpec
from core.run import precision
from core.run.lifecycle import DIVERGENCE_CEILING
from core.run.specs import (
    CBPSpec,
    ModelSpec,
    OptimizerSpec,
    PrecisionSpec,
    ReDoSpec,
    ShrinkPerturbSpec,
    check_choice,
    check_range,
)

Dataset = Literal[DATASETS]  # the dataset names core.data knows


@dataclass(frozen=True)
class ImageConfig:
    """The `key=value` fields both image experiments share.

    Each experiment's `Config` extends it with its own fields (continual learning also sets its
    own `dataset` and `optimizer` defaults). Every value is checked when the config is built.
    """

    dataset: Dataset = "cifar10"  # the image dataset (docs/data.md)
    data_root: str | None = None  # folder holding the datasets (None: $LOP_DATA, else ./data)
    download: bool = False  # fetch a missing dataset (needs network access)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)  # dataset=synthetic only
    augment: bool = True  # the dataset's training augmentation (crop, flip; jitter, rotation)
    model: ModelSpec = field(default_factory=ModelSpec)  # architecture (None: paper default)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)  # weight_decay is L2
    cbp: CBPSpec = field(default_factory=CBPSpec)  # Continual Backprop after each step
    redo: ReDoSpec = field(default_factory=ReDoSpec)  # ReDo after each step
    shrink_perturb: ShrinkPerturbSpec = field(default_factory=ShrinkPerturbSpec)  # after each step
    batch_size: int = 128  # training mini-batch
    log_every: int | None = None  # steps between log points (None: one epoch)
    probe: ProbeSpec = field(default_factory=ProbeSpec)  # metrics probe options
    probe_every: int = 5  # probe cadence in epochs (continual: in task_unit); also at phase ends
    probe_size: int = 500  # stratified probe batch size (train and evaluation split)
    checkpoint_every: int = 2000  # steps between checkpoints (taken at the next log point)
    checkpoint_minutes: float | None = None  # also checkpoint once this much wall time passed
    keep_final_checkpoint: bool = False  # keep the final weights when the run ends (else removed)
    divergence_ceiling: float | None = DIVERGENCE_CEILING  # diverged above this x initial loss
    seed: int = 0  # seeds every random stream (core.run.seeds.seed_for)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)  # docs/precision.md

    # integer fields that must be >= 1 (an experiment's Config adds its own)
    positive_fields: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "probe_every",
        "probe_size",
        "checkpoint_every",
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            if typing.get_origin(hints[f.name]) is Literal:
                check_choice(f.name, getattr(self, f.name), typing.get_args(hints[f.name]))
        small = [k for k in self.positive_fields if getattr(self, k) < 1]
        if self.log_every is not None and self.log_every < 1:
            small.append("log_every")
        if small:
            raise ValueError(f"{', '.join(small)} must be >= 1")
        if self.checkpoint_minutes is not None:
            check_range("checkpoint_minutes", self.checkpoint_minutes, 0.0, low_open=True)
        if self.divergence_ceiling is not None:
            check_range("divergence_ceiling", self.divergence_ceiling, 1.0, low_open=True)
        if self.device == "cpu":  # a GPU's abilities are checked when the run resolves it
            precision.check(self.precision, torch.device("cpu"))
