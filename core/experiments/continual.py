r"""Class-incremental continual learning (paper §3.1).

The classes are split into tasks of `classes_per_task` in a seeded order; one model and one
optimizer learn the tasks in sequence. At each task start the head is zeroed and, unless
`reset_head_optimizer=false` (the reference behaviour), the optimizer state of the head too, so no
Adam moment of an earlier task moves the fresh head; the body keeps its optimizer state. Loss and
accuracy are masked to the task's classes; the accuracy over all logits is logged as
`acc_unmasked`. The interventions `cbp.*`, `redo.*`, `shrink_perturb.*` run after every optimizer
step; L2 is `optimizer.weight_decay`.

Run (paper scale: Tiny ImageNet under $LOP_DATA, 40 tasks x 500 epochs, hours on an A100):

    python -m core.experiments.continual model.arch=resnet optimizer.lr=1e-3 seed=40

Smoke run (seconds on a CPU):

    python -m core.experiments.continual dataset=synthetic model.arch=mlp \
        model.hidden_sizes=32,32 classes_per_task=2 task_length=3 device=cpu

Rows (split, metric), at step s = optimizer steps done:
  train: loss, acc, acc_unmasked (means over the steps since the last log point), task,
         "<layer>/cbp_replaced", "<layer>/redo_reset" (units re-initialised since the last log
         point, with cbp.enabled / redo.enabled)
  val:   loss, acc, acc_unmasked on the task's whole evaluation split, in eval mode
  train / val, "<layer>/<metric>": the metrics probe on the task's train / val probe batch
  start_train / start_val, "<layer>/<metric>": the probe at the task start, after the head reset
  the probe's whole-model rows: probe_loss, probe_accuracy, probe_accuracy_unmasked (masked loss)

Random streams (`core.run.seeds.seed_for(seed, purpose, ...)`): "tasks" (the class order), "init",
"order", "augment", "noise" (noisy SGD), "cbp", "redo", "shrink_perturb", "dropout" (torch's global
RNG), and "probe" per task and split (the probe batches never share the training streams).

`pack=N` trains seeds seed .. seed+N-1 as one packed ensemble, each member its single run
(`core.experiments.continual_packed`; docs/experiments.md, "Packed runs").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from tqdm import tqdm

from core.data import (
    BatchOrder,
    ImageData,
    indices_of,
    load_images,
    stratified_indices,
    task_classes,
)
from core.experiments.classification import (
    class_remap,
    classification_probe,
    evaluate,
    masked_loss,
)
from core.experiments.image_config import Dataset, ImageConfig
from core.models import build_model
from core.models.packed import PACKABLE_ARCHS
from core.run import build, cli, lifecycle, precision
from core.run.record import RunRecord
from core.run.seeds import seed_for
from core.run.specs import OptimizerSpec


@dataclass(frozen=True)
class Config(ImageConfig):
    """A continual-learning run; every field is a `key=value` override.

    The shared fields are those of `ImageConfig`; `log_every=None` is one epoch of a task,
    `probe_every` counts `task_unit`s, the probe batches are drawn per task.
    """

    dataset: Dataset = "tiny_imagenet"  # the image dataset (docs/data.md)
    optimizer: OptimizerSpec = field(  # one optimizer for the whole run; weight_decay is L2
        default_factory=lambda: OptimizerSpec(name="adam", lr=1e-3)
    )
    classes_per_task: int = 5  # classes of each task
    num_tasks: int | None = None  # tasks to run (None: every class once)
    task_length: int = 500  # length of each task, in task_unit
    task_unit: Literal["epochs", "steps"] = "epochs"  # reference code: epochs; paper: steps
    reset_head: bool = True  # zero the head's weights and bias at every task start
    reset_head_optimizer: bool = True  # also drop the head's optimizer state (false: reference)
    pack: int = 1  # >1: seeds seed .. seed+pack-1 as one packed ensemble (mlp, cnn; sgd, adam)

    positive_fields: ClassVar[tuple[str, ...]] = (
        *ImageConfig.positive_fields,
        "task_length",
        "classes_per_task",
        "pack",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pack == 1:
            return
        refused = {
            "model.arch": (self.model.arch, PACKABLE_ARCHS),
            "optimizer.name": (self.optimizer.name, ("sgd", "adam")),
            "cbp.enabled": (self.cbp.enabled, (False,)),
            "redo.enabled": (self.redo.enabled, (False,)),
            "shrink_perturb.enabled": (self.shrink_perturb.enabled, (False,)),
            "precision.autocast": (self.precision.autocast, ("none",)),
            "precision.channels_last": (self.precision.channels_last, (False,)),
            "precision.compile": (self.precision.compile, (False,)),
        }
        for key, (value, valid) in refused.items():
            if value not in valid:
                raise ValueError(
                    f"pack={self.pack}: {key}={value!r} is not supported in a packed run yet; "
                    f"valid: {', '.join(map(str, valid))} (or pack=1)"
                )


@dataclass(frozen=True)
class Task:
    """One task of the run: its classes, data and place in the schedule (global steps)."""

    index: int
    classes: torch.Tensor  # the task's global labels
    remap: torch.Tensor  # global label -> position in classes (-1 outside)
    train_idx: torch.Tensor  # its training samples
    val_x: torch.Tensor  # its whole evaluation split
    val_y: torch.Tensor
    begin: int  # steps done when it starts
    end: int  # steps done when it ends
    log_every: int  # steps between its log points
    probe_every: int  # steps between its probes


def schedule(cfg: Config, data: ImageData) -> list[Task]:
    """The tasks of the run, from the seeded class order."""
    device = data.train_y.device
    classes = task_classes(
        data.num_classes, cfg.classes_per_task, seed_for(cfg.seed, "tasks"), cfg.num_tasks
    )
    tasks, begin = [], 0
    for index, c in enumerate(classes):
        # ascending, so that a tie of logits goes to the same class with and without the mask
        c = c.sort().values.to(device)
        train_idx = indices_of(data.train_y, c)
        val_idx = indices_of(data.test_y, c)
        epoch = -(-len(train_idx) // cfg.batch_size)  # steps per epoch
        unit = epoch if cfg.task_unit == "epochs" else 1
        end = begin + cfg.task_length * unit
        tasks.append(
            Task(
                index=index,
                classes=c,
                remap=class_remap(c, data.num_classes),
                train_idx=train_idx,
                val_x=data.test_x[val_idx],
                val_y=data.test_y[val_idx],
                begin=begin,
                end=end,
                log_every=cfg.log_every or epoch,
                probe_every=cfg.probe_every * unit,
            )
        )
        begin = end
    return tasks


def task_probes(cfg: Config, data: ImageData, model: nn.Module, task: Task) -> dict[str, Any]:
    """The train and val probes of `task`: stratified batches on the task's own stream."""
    probes = {}
    for i, (split, x, y) in enumerate(
        (("train", data.train_x, data.train_y), ("val", data.test_x, data.test_y))
    ):
        g = torch.Generator().manual_seed(seed_for(cfg.seed, "probe", task.index, i))
        idx = stratified_indices(y, task.classes, cfg.probe_size, g)
        probes[split] = classification_probe(
            model, data.inputs(x[idx]), y[idx], cfg.probe, g, task.classes
        )
    return probes


@dataclass
class ContinualState:
    """Everything a checkpoint of the run holds (the state after `step` optimizer steps), and
    the run's schedule (`tasks`, fixed by the config)."""

    tasks: list[Task]
    step: int
    task: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    interventions: build.Interventions
    streams: dict[str, torch.Generator]  # order, augment, noise (dropout: torch's global RNG)
    order: BatchOrder  # the current task's batches
    stats: lifecycle.RunningStats  # its initial loss (the divergence ceiling)
    summary: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "task": self.task,
            "model": self.model.state_dict(),
            "model_config": self.model.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "interventions": self.interventions.state_dict(),
            "random": lifecycle.random_state(self.streams),
            "order": self.order.state_dict(),
            "stats": self.stats.state_dict(),
            "summary": self.summary,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.task = state["step"], state["task"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.interventions.load_state_dict(state["interventions"])
        lifecycle.set_random_state(self.streams, state["random"])
        self.order = BatchOrder(
            self.tasks[self.task].train_idx, self.order.batch_size, self.order.generator
        )
        self.order.load_state_dict(state["order"])
        self.stats.load_state_dict(state["stats"])
        self.summary = state["summary"]


def begin_task(state: ContinualState, cfg: Config, task: Task) -> None:
    """Reset the head (and its optimizer state) for `task` and start its batch order."""
    reset_head(cfg, state.model, state.optimizer)
    state.task = task.index
    state.order = BatchOrder(task.train_idx, cfg.batch_size, state.streams["order"])


def reset_head(cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Zero `model.head`'s weights and bias (`reset_head`) and drop their optimizer state
    (`reset_head_optimizer`)."""
    head = list(model.head.parameters())
    if cfg.reset_head:
        with torch.no_grad():
            for p in head:
                p.zero_()
    if cfg.reset_head_optimizer:
        for p in head:
            optimizer.state.pop(p, None)


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict:
    """Run (or resume, from `sink`'s last checkpoint) the continual-learning experiment;
    `pack > 1` runs the packed ensemble (`core.experiments.continual_packed`)."""
    train = _train
    if cfg.pack > 1:
        from core.experiments import continual_packed  # it builds on this module

        train = continual_packed.train
    with precision.precision_scope(cfg.precision, lifecycle.resolve_device(cfg.device)):
        return lifecycle.run_recorded(train, cfg, sink, progress)


def _train(cfg: Config, sink: RunRecord, progress: bool) -> dict:
    device = lifecycle.resolve_device(cfg.device)
    data = load_images(cfg.dataset, cfg.data_root, cfg.download, cfg.synthetic, device)
    tasks = schedule(cfg, data)
    model_cfg = cfg.model.model_config(data.shape, data.num_classes)
    # config.json only now: missing data or a model unfit for it leaves no record behind
    sink.write_config(cfg, "continual", device=str(device))

    model = build_model(model_cfg, seed=seed_for(cfg.seed, "init")).to(device)
    forward = precision.training_forward(model, cfg.precision, device)
    streams = lifecycle.generators(cfg.seed, device, ("order", "augment", "noise"))
    optimizer = build.build_optimizer(cfg.optimizer, model.parameters(), streams["noise"])
    interventions = build.build_interventions(
        cfg, model, optimizer, build.intervention_streams(cfg.seed, device)
    )
    lifecycle.seed_dropout(cfg.seed)
    state = ContinualState(
        tasks=tasks,
        step=0,
        task=0,
        model=model,
        optimizer=optimizer,
        interventions=interventions,
        streams=streams,
        order=BatchOrder(tasks[0].train_idx, cfg.batch_size, streams["order"]),
        stats=lifecycle.RunningStats(device, cfg.divergence_ceiling),
        summary={"task_val_acc": [], "task_train_acc": []},
    )
    saved = sink.load_checkpoint()
    if saved is None:
        begin_task(state, cfg, tasks[0])
        probes = task_probes(cfg, data, model, tasks[0])
        for split, probe in probes.items():
            sink.log(0, probe(), split=f"start_{split}")
    else:
        state.load_state_dict(saved[1])
        probes = task_probes(cfg, data, model, tasks[state.task])
    sink.set_status("running")

    total = tasks[-1].end
    checkpoints = lifecycle.CheckpointPolicy(
        state.step, cfg.checkpoint_every, cfg.checkpoint_minutes
    )
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc="continual")
    model.train()
    while state.step < total:
        task = tasks[state.task]
        idx = state.order.next()
        x = data.inputs(data.train_x[idx], streams["augment"], augment=cfg.augment)
        y = data.train_y[idx]
        loss, correct, correct_all = masked_loss(forward(x), y, task.classes, task.remap)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        interventions.step()
        state.step += 1
        state.stats.add(state.step, loss, correct, correct_all, len(idx))

        done = state.step - task.begin
        task_end = state.step == task.end
        if done % task.log_every and not task_end:
            continue
        train, divergence = state.stats.read()
        state.stats.reset()
        val = evaluate(model, data, task.val_x, task.val_y, task.classes)
        if divergence is None and not math.isfinite(val["loss"]):
            divergence = lifecycle.Divergence(state.step, f"non-finite loss at step {state.step}")
        counts = interventions.take_counts()
        rows = [("train", {**train, "task": task.index, **counts}), ("val", val)]
        if divergence is None and (done % task.probe_every == 0 or task_end):
            rows += [(split, probe()) for split, probe in probes.items()]
        if divergence is None and task_end:
            state.summary["task_train_acc"].append(train["acc"])
            state.summary["task_val_acc"].append(val["acc"])
            if task.index + 1 < len(tasks):
                begin_task(state, cfg, tasks[task.index + 1])
                probes = task_probes(cfg, data, model, tasks[state.task])
                rows += [(f"start_{split}", probe()) for split, probe in probes.items()]
        last = state.step == total
        if lifecycle.end_interval(sink, state.step, rows, divergence, state, checkpoints, last):
            bar.close()
            return state.summary
        bar.update(state.step - bar.n)
        bar.set_postfix(task=task.index, loss=f"{train['loss']:.3f}", val_acc=f"{val['acc']:.3f}")
    bar.close()
    summary = {
        **state.summary,
        "steps": state.step,
        "final_val_acc": state.summary["task_val_acc"][-1],
    }
    sink.finish("completed", summary=summary, keep_final_checkpoint=cfg.keep_final_checkpoint)
    return summary


if __name__ == "__main__":
    cli.main("continual", Config, run)
