"""A run's life, shared by the experiments: starting it under the record's status rules
(`run_recorded`), its random streams (`generators`, `random_state`, a model's own dropout masks:
`DropoutStream`), the loss and accuracy summed on the device between log points with the
divergence watch (`RunningStats`), the checkpoint cadence (`CheckpointPolicy`) and what a loop
calls at a log point (`end_interval`: divergence check, log, checkpoint).

Divergence. A run is `diverged` at the first step whose training loss is non-finite or above the
ceiling `divergence_ceiling x` the run's initial loss (the loss of its first step, before any
update; default `DIVERGENCE_CEILING` = 1000, so a cross-entropy that starts at log(5) = 1.6
diverges above 1.6e3; `null` keeps only the non-finite rule). Adam's steps are bounded by its
learning rate, so an exploding Adam run can reach 1e19 without a NaN: the ceiling catches it at the
step it crosses. A finite loss with non-finite weights is caught by the evaluation at the log point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from core.run.record import RunRecord
from core.run.seeds import seed_for

DIVERGENCE_CEILING = 1000.0  # default `divergence_ceiling`: x the initial loss


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_recorded(
    train: Callable[[Any, RunRecord, bool], dict], cfg: Any, sink: RunRecord, progress: bool
) -> dict:
    """`train(cfg, sink, progress)` under the record's status rules.

    A completed or diverged record returns its summary without training (removing checkpoints a
    kill left after the status was written). An exception after the run started (its config.json
    written) marks the record `failed` with the exception as the reason; either way it propagates.
    """
    if sink.status in ("completed", "diverged"):
        sink.prune_checkpoints(getattr(cfg, "keep_final_checkpoint", False))
        return sink.status_info["summary"]
    try:
        return train(cfg, sink, progress)
    except Exception as err:
        if sink.opened:
            sink.set_status("failed", f"{type(err).__name__}: {err}")
        raise


def generators(
    seed: int, device: torch.device | str, purposes: Iterable[str], *index: int
) -> dict[str, torch.Generator]:
    """One generator on `device` per purpose, seeded `seed_for(seed, purpose, *index)`."""
    return {p: torch.Generator(device).manual_seed(seed_for(seed, p, *index)) for p in purposes}


class DropoutStream:
    """One model's dropout masks: torch's global RNG (which `nn.Dropout` and attention dropout
    draw from) set to this model's own state, seeded `seed_for(seed, "dropout", *index)`, for the
    model's forward passes (`drawing`) and put back after, so that no two models share a stream.
    `state` (also `get_state()`, `set_state()`, as a generator's) is what a checkpoint saves."""

    def __init__(self, seed: int, device: torch.device, *index: int) -> None:
        self.device = device
        outer = self._get()
        torch.default_generator.manual_seed(seed_for(seed, "dropout", *index))
        if device.type == "cuda":
            torch.cuda.default_generators[_cuda_index(device)].manual_seed(
                seed_for(seed, "dropout", *index)
            )
        self.state = self._get()
        self._set(outer)

    def _get(self) -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def _set(self, states: list[torch.Tensor]) -> None:
        torch.set_rng_state(states[0])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(states[1], self.device)

    def get_state(self) -> list[torch.Tensor]:
        return self.state

    def set_state(self, state: list[torch.Tensor]) -> None:
        self.state = list(state)

    @contextmanager
    def drawing(self) -> Iterator[None]:
        outer = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(outer)


def _cuda_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


@dataclass(frozen=True)
class Divergence:
    """Where and why a run diverged."""

    step: int
    reason: str


class RunningStats:
    """Loss and accuracy summed on the device between log points, and the divergence watch.

    `add` never synchronises with the host (a few small device operations); `read` does, once per
    log point. The first bad step is found without a per-step comparison on the host: the running
    maximum of the loss stays above the ceiling (or non-finite: NaN and inf propagate) once it has
    been, so counting the steps after which it was still within bounds locates the first bad
    step. The ceiling is `ceiling x` the first loss ever added (kept across resets and in
    `state_dict`, so a resumed run keeps its initial loss).
    """

    def __init__(self, device: torch.device, ceiling: float | None = DIVERGENCE_CEILING) -> None:
        self.device = device
        self.factor = math.inf if ceiling is None else float(ceiling)
        self.ceiling: torch.Tensor | None = None  # factor x the initial loss, on the device
        self.reset()

    def reset(self) -> None:
        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=self.device)

        self.loss_sum = zero(torch.float64)  # sum of loss x batch size
        self.correct = zero(torch.int64)  # masked correct predictions
        self.correct_all = zero(torch.int64)  # unmasked correct predictions
        self.max_loss = torch.full((), -math.inf, dtype=torch.float64, device=self.device)
        self.finite_steps = zero(torch.int64)  # steps after which every loss was finite
        self.bounded_steps = zero(torch.int64)  # ... and at most the ceiling
        self.first_step: int | None = None  # the step of the first `add` since the reset
        self.steps = 0
        self.count = 0

    def add(
        self,
        step: int,
        loss: torch.Tensor,
        correct: torch.Tensor,
        correct_all: torch.Tensor,
        n: int,
    ) -> None:
        """Add the step's mean loss over `n` samples and its correct counts; steps are
        consecutive between resets."""
        if self.first_step is None:
            self.first_step = step
        assert step == self.first_step + self.steps, "RunningStats.add skipped a step"
        loss = loss.detach().double()
        if self.ceiling is None:  # the first step of the run: its loss sets the ceiling
            self.ceiling = (
                loss * self.factor if math.isfinite(self.factor) else loss.new_tensor(math.inf)
            )
        self.loss_sum.add_(loss, alpha=n)
        self.correct.add_(correct)
        self.correct_all.add_(correct_all)
        torch.maximum(self.max_loss, loss, out=self.max_loss)  # NaN propagates
        finite = torch.isfinite(self.max_loss)
        self.finite_steps.add_(finite)
        self.bounded_steps.add_(finite & (self.max_loss <= self.ceiling))
        self.steps += 1
        self.count += n

    def read(self) -> tuple[dict[str, float], Divergence | None]:
        """({loss, acc, acc_unmasked} means since the last reset, the divergence or None)."""
        counts = (self.correct, self.correct_all, self.finite_steps, self.bounded_steps)
        totals = torch.stack([self.loss_sum, *(c.double() for c in counts)]).tolist()
        loss_sum, correct, correct_all, finite_steps, bounded_steps = totals
        n = max(self.count, 1)
        means = {"loss": loss_sum / n, "acc": correct / n, "acc_unmasked": correct_all / n}
        if bounded_steps == self.steps:
            return means, None
        step = self.first_step + int(bounded_steps)
        if finite_steps < self.steps and int(finite_steps) == int(bounded_steps):
            return means, Divergence(step, f"non-finite loss at step {step}")
        ceiling = float(self.ceiling)
        return means, Divergence(
            step, f"loss above the divergence ceiling {ceiling:.4g} at step {step}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"ceiling": self.ceiling}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ceiling = state["ceiling"]
        self.ceiling = None if ceiling is None else ceiling.to(self.device)


class Checkpointed(Protocol):
    """A loop's checkpointed state: one object with a `summary` and `state_dict()`."""

    summary: dict[str, Any]

    def state_dict(self) -> dict[str, Any]: ...


class CheckpointPolicy:
    """When a log point also checkpoints: every `every_steps` steps, or (with `every_minutes`)
    once that much wall time has passed since the last checkpoint, and always at the last step."""

    def __init__(self, step: int, every_steps: int, every_minutes: float | None = None) -> None:
        self.every_steps = every_steps
        self.every_seconds = math.inf if every_minutes is None else 60.0 * every_minutes
        self._mark(step)

    def _mark(self, step: int) -> None:
        self.last_step, self.last_time = step, time.monotonic()

    def due(self, step: int) -> bool:
        return (
            step - self.last_step >= self.every_steps
            or time.monotonic() - self.last_time >= self.every_seconds
        )

    def save(self, sink: RunRecord, step: int, state: Checkpointed) -> None:
        sink.save_checkpoint(step, state.state_dict())
        self._mark(step)


def end_interval(
    sink: RunRecord,
    step: int,
    rows: Iterable[tuple[str, Mapping[str, float]]],
    divergence: Divergence | None,
    state: Checkpointed,
    checkpoints: CheckpointPolicy,
    last: bool,
) -> bool:
    """What every loop does at a log point, after computing its rows `[(split, {key: value})]`.

    A divergence ends the run: status `diverged` with the step and reason, and the summary of
    `state` (its "summary" entry, with "diverged_at"); nothing of this log point is logged. Else
    the rows are logged and, when due (or at the `last` step), `state` is checkpointed. Returns
    whether the run diverged.
    """
    if divergence is not None:
        summary = {**state.summary, "diverged_at": divergence.step}
        state.summary = summary
        sink.finish(
            "diverged",
            divergence.reason,
            keep_final_checkpoint=False,
            step=divergence.step,
            summary=summary,
        )
        return True
    for split, values in rows:
        sink.log(step, values, split=split)
    if last or checkpoints.due(step):
        checkpoints.save(sink, step, state)
    return False
