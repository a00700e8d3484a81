"""Class-incremental task splits, stratified probe batches, and the shuffled batch order.

The class order is a seeded permutation of the classes; task t holds classes
`order[t * k : (t + 1) * k]` (paper §B.1.1: 40 disjoint tasks of 5 Tiny ImageNet classes). The
probe batch of a task is stratified: an equal share of each task class, drawn at random without
replacement (the reference code took the first 500 indices of a task's subset, which lists the
classes one after another, so its fixed batch held a single class).
"""

from __future__ import annotations

import math

import torch


def task_classes(
    num_classes: int, classes_per_task: int, seed: int, num_tasks: int | None = None
) -> list[torch.Tensor]:
    """The classes of each task: disjoint, each class at most once, the same for the same seed.

    `num_tasks=None` uses every class (`num_classes` must then be a multiple of
    `classes_per_task`).
    """
    if classes_per_task < 1:
        raise ValueError(f"classes_per_task must be >= 1, got {classes_per_task}")
    available = num_classes // classes_per_task
    if num_tasks is None:
        if num_classes % classes_per_task:
            raise ValueError(
                f"{num_classes} classes do not split into tasks of {classes_per_task}; "
                "set num_tasks or choose a divisor"
            )
        num_tasks = available
    if not 1 <= num_tasks <= available:
        raise ValueError(
            f"num_tasks={num_tasks}: {num_classes} classes give 1 to {available} tasks of "
            f"{classes_per_task} classes"
        )
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    return [order[t * classes_per_task : (t + 1) * classes_per_task] for t in range(num_tasks)]


def indices_of(labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the samples whose label is one of `classes`."""
    return torch.isin(labels, classes.to(labels.device)).nonzero().squeeze(1)


def stratified_indices(
    labels: torch.Tensor, classes: torch.Tensor, size: int, generator: torch.Generator
) -> torch.Tensor:
    """About `size` sample indices with (as nearly as possible) equal counts per class.

    Class c_i contributes min(n_i, q_i) samples drawn without replacement, with q_i = size // k,
    plus one for the first size % k classes (k = len(classes)); fewer than `size` come back when
    the classes hold fewer samples. Indices are grouped by class, in the order of `classes`.
    `generator` lives on the CPU.
    """
    quota, extra = divmod(size, len(classes))
    chosen = []
    for i, c in enumerate(classes.tolist()):
        members = (labels == c).nonzero().squeeze(1).cpu()
        take = min(len(members), quota + (1 if i < extra else 0))
        pick = torch.randperm(len(members), generator=generator)[:take]
        chosen.append(members[pick.sort().values])
    return torch.cat(chosen).to(labels.device)


class BatchOrder:
    """Mini-batches of an index set, reshuffled each epoch by the caller's generator.

    An epoch is ceil(n / batch_size) batches (the last may be smaller), as a shuffled DataLoader
    without drop_last. The state (current permutation and position) is what a checkpoint saves;
    the generator's own state is saved by its owner.
    """

    def __init__(self, indices: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        if len(indices) == 0:
            raise ValueError("an empty index set has no batches")
        self.indices = indices
        self.batch_size = batch_size
        self.generator = generator
        self.order: torch.Tensor | None = None  # this epoch's permutation of `indices`
        self.position = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def next(self) -> torch.Tensor:
        """The indices of the next batch; a new epoch draws a new permutation."""
        if self.order is None or self.position >= len(self.indices):
            perm = torch.randperm(
                len(self.indices), generator=self.generator, device=self.generator.device
            )
            self.order = self.indices[perm.to(self.indices.device)]
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        order = state["order"]
        self.order = None if order is None else order.to(self.indices.device)
        self.position = state["position"]
