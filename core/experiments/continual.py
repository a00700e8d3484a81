r"""Class-incremental continual learning (paper §3.1), one run or a packed ensemble of runs.

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
"order", "augment", "noise" (noisy SGD), "cbp", "redo", "shrink_perturb", "dropout" (the run's own
state of torch's global RNG, which `nn.Dropout` draws from: `core.run.lifecycle.DropoutStream`),
and "probe" per task and split (the probe batches never share the training streams).

Packed runs (`pack=N`; docs/experiments.md, "Packed runs"): seeds seed .. seed+N-1 as one
`core.models.packed.PackedModel`, member k computing the single run of `seed=seed+k`, `pack=1`
(its dropout masks from a generator seeded as its single run's `DropoutStream`). One loop runs
both, over a list of `Member`s: at pack=1 the one member is the run, its record the sink; at pack=N
member k's record is `<run_dir>/members/seed<seed+k>/` (its single run's record, rows written at
the trial's checkpoints), the trial's holds the stacked checkpoints, the members' summaries and
per log point the live members' means, and a diverging member ends there while the others go on.
"""

from __future__ import annotations

import dataclasses
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
    packed_masked_loss,
)
from core.experiments.image_config import Dataset, ImageConfig
from core.models import build_model
from core.models.packed import PACKABLE_ARCHS, PackedModel, member_optimizer_state
from core.run import build, cli, lifecycle, precision, schema
from core.run.record import RunRecord, load_metrics
from core.run.seeds import seed_for
from core.run.specs import OptimizerSpec

EXPERIMENT = "continual"
MEANS = ("loss", "acc", "acc_unmasked")  # a packed trial's rows: the live members' means


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


@dataclass
class Member:
    """One seed's run: its single-run config, record, schedule and state."""

    cfg: Config  # its single run's config (pack=1: the run's own)
    record: RunRecord  # pack=1: the sink
    tasks: list[Task]
    streams: dict[str, Any]  # order, augment, noise, dropout (pack=1: a DropoutStream)
    order: BatchOrder  # the current task's batches
    stats: lifecycle.RunningStats  # its initial loss (the divergence ceiling)
    summary: dict[str, Any] = field(
        default_factory=lambda: {"task_val_acc": [], "task_train_acc": []}
    )
    ended: bool = False  # its record is finished (diverged, or completed at the end)
    logged: int = -1  # the last step its record holds rows for
    probes: dict[str, Any] = field(default_factory=dict)  # the current task's

    def begin(self, task: Task) -> None:
        """Start the batch order of `task`."""
        self.order = BatchOrder(task.train_idx, self.cfg.batch_size, self.streams["order"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "random": {name: g.get_state() for name, g in self.streams.items()},
            "order": self.order.state_dict(),
            "stats": self.stats.state_dict(),
            "summary": self.summary,
        }

    def load_state_dict(self, state: dict[str, Any], task: Task) -> None:
        for name, g in self.streams.items():
            g.set_state(state["random"][name])
        self.begin(task)
        self.order.load_state_dict(state["order"])
        self.stats.load_state_dict(state["stats"])
        self.summary = state["summary"]  # an ended member's record is finished: see _train


@dataclass
class ContinualState:
    """What a checkpoint holds (the state after `step` optimizer steps): the model (pack>1: the
    PackedModel), its optimizer and interventions, and every member's state."""

    step: int
    task: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    interventions: build.Interventions  # none in a packed run
    members: list[Member]
    view: nn.Module  # a single model: pack=1 the model itself, else member k's weights

    def member_model(self, k: int) -> nn.Module:
        """Member k as a single model, to evaluate and probe with the single run's code."""
        if isinstance(self.model, PackedModel):
            return self.model.load_member(k, self.view)
        return self.model

    def state_dict(self, k: int | None = None) -> dict[str, Any]:
        """The checkpoint; with `k`, packed member k's alone, in a single run's layout."""
        model, members = self.model.state_dict(), self.members
        optimizer = self.optimizer.state_dict()
        if k is not None:
            model, members = self.model.member_state_dict(k), [members[k]]
            optimizer = member_optimizer_state(self.model, optimizer, k)
        return {
            "step": self.step,
            "task": self.task,
            "model": model,
            "model_config": self.model.cfg.to_dict(),
            "optimizer": optimizer,
            "interventions": self.interventions.state_dict(),
            "members": [m.state_dict() for m in members],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.task = state["step"], state["task"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.interventions.load_state_dict(state["interventions"])
        for m, saved in zip(self.members, state["members"], strict=True):
            m.load_state_dict(saved, m.tasks[self.task])


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict:
    """Run (or resume, from `sink`'s last checkpoint) the continual-learning experiment."""
    with precision.precision_scope(cfg.precision, lifecycle.resolve_device(cfg.device)):
        return lifecycle.run_recorded(_train, cfg, sink, progress)


def _members(cfg: Config, sink: RunRecord, data: ImageData, device: torch.device) -> list[Member]:
    """The run's members, each with its single run's config (pack=1: the run itself, on the
    sink); the records exist after it."""
    configs = [dataclasses.replace(cfg, seed=cfg.seed + k, pack=1) for k in range(cfg.pack)]
    schedules = [schedule(c, data) for c in configs]
    sizes = [[(len(t.classes), len(t.train_idx)) for t in tasks] for tasks in schedules]
    if any(other != sizes[0] for other in sizes):  # the members step together
        raise ValueError(
            "pack: the members' tasks differ in size (classes of unequal size); packed members "
            "need tasks of equal size (cifar10, cifar100, tiny_imagenet, synthetic), or pack=1"
        )
    # config.json only now: missing data, a model unfit for it or unequal tasks leave no record
    sink.write_config(cfg, EXPERIMENT, device=str(device))
    members = []
    for c, tasks in zip(configs, schedules, strict=True):
        record = sink
        if cfg.pack > 1:
            name = f"seed{c.seed}"
            record = RunRecord(
                schema.members_dir(sink.run_dir) / name,
                run_id=f"{sink.run_id}/{name}",
                flush_rows=2**62,  # rows are written at the trial's checkpoints only
            )
            record.write_config(c, EXPERIMENT, device=str(device))
        # a packed member's masks come from its "dropout" generator, drawn as nn.Dropout draws
        # from torch's global RNG in its single run, which has its own state of that RNG
        streams = lifecycle.generators(c.seed, device, ("order", "augment", "noise", "dropout"))
        if cfg.pack == 1:
            streams["dropout"] = lifecycle.DropoutStream(c.seed, device)
        order = BatchOrder(tasks[0].train_idx, c.batch_size, streams["order"])
        stats = lifecycle.RunningStats(device, c.divergence_ceiling)
        members.append(Member(c, record, tasks, streams, order, stats))
    return members


def _train(cfg: Config, sink: RunRecord, progress: bool) -> dict:
    device = lifecycle.resolve_device(cfg.device)
    data = load_images(cfg.dataset, cfg.data_root, cfg.download, cfg.synthetic, device)
    model_cfg = cfg.model.model_config(data.shape, data.num_classes)
    members = _members(cfg, sink, data, device)
    singles = [build_model(model_cfg, seed=seed_for(m.cfg.seed, "init")) for m in members]
    model = singles[0]
    if cfg.pack > 1:
        model = PackedModel(singles, [m.streams["dropout"] for m in members])
    model, view = model.to(device), singles[0].to(device)
    forward = precision.training_forward(model, cfg.precision, device)
    # noise: noisy SGD's (a packed run's sgd or adam never draws it)
    optimizer = build.build_optimizer(
        cfg.optimizer, model.parameters(), members[0].streams["noise"]
    )
    interventions = build.build_interventions(
        cfg, model, optimizer, build.intervention_streams(cfg.seed, device)
    )
    state = ContinualState(0, 0, model, optimizer, interventions, members, view)
    saved = sink.load_checkpoint()
    if saved is not None:
        state.load_state_dict(saved[1])
    else:
        reset_head(cfg, model, optimizer)
    for k, m in enumerate(members):
        frame = load_metrics(m.record.run_dir)
        m.logged = int(frame["step"].max()) if len(frame) else -1
        if m.record.status in schema.FINISHED:  # finished after the checkpoint: nothing to add
            m.ended, m.summary = True, m.record.status_info["summary"]
            continue
        m.probes = task_probes(m.cfg, data, state.member_model(k), m.tasks[state.task])
        if m.logged < 0:  # a fresh start (without a checkpoint the sink holds no rows)
            for split, probe in m.probes.items():
                m.record.log(0, probe(), split=f"start_{split}")
        if m.record is not sink:
            m.record.set_status("running")
    sink.set_status("running")

    timing = members[0].tasks  # every member's tasks begin and end at the same steps
    classes = [torch.stack([m.tasks[i].classes for m in members]) for i in range(len(timing))]
    remaps = [torch.stack([m.tasks[i].remap for m in members]) for i in range(len(timing))]
    total = timing[-1].end
    checkpoints = lifecycle.CheckpointPolicy(
        state.step, cfg.checkpoint_every, cfg.checkpoint_minutes
    )
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc="continual")
    model.train()
    while state.step < total and not all(m.ended for m in members):
        task = timing[state.task]
        xs, ys = [], []
        for m in members:
            idx = m.order.next()
            xs.append(data.inputs(data.train_x[idx], m.streams["augment"], augment=cfg.augment))
            ys.append(data.train_y[idx])
        if cfg.pack == 1:
            with members[0].streams["dropout"].drawing():
                out = forward(xs[0])
            loss = masked_loss(out, ys[0], task.classes, task.remap)
            losses, correct, correct_all = (t.unsqueeze(0) for t in loss)
        else:
            out = forward(torch.stack(xs))
            losses, correct, correct_all = packed_masked_loss(
                out, torch.stack(ys), classes[state.task], remaps[state.task]
            )
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # member k's parameters get the gradient of its own loss
        optimizer.step()
        interventions.step()
        state.step += 1
        for k, m in enumerate(members):
            if not m.ended:
                m.stats.add(state.step, losses[k], correct[k], correct_all[k], len(ys[k]))

        done = state.step - task.begin
        task_end = state.step == task.end
        if done % task.log_every and not task_end:
            continue
        means = _log_point(cfg, sink, state, data, done, task_end)
        if all(m.ended for m in members):
            break
        if state.step == total or checkpoints.due(state.step):
            for m in members:
                m.record.flush()
            checkpoints.save(sink, state.step, state)
        bar.update(state.step - bar.n)
        bar.set_postfix(task=task.index, loss=f"{means['train']['loss']:.3f}")
    bar.close()
    return _finish(cfg, sink, state)


def _log_point(
    cfg: Config, sink: RunRecord, state: ContinualState, data: ImageData, done: int, task_end: bool
) -> dict[str, dict[str, float]]:
    """Each live member's rows of this log point, as its single run computes them, or its end
    (diverged); at a task end every member moves to its next task (head reset, batch order,
    probes). Returns the live members' train and val means, which a packed trial logs."""
    step, members = state.step, state.members
    counts = state.interventions.take_counts()
    rows: dict[int, list[tuple[str, dict[str, float]]]] = {}
    for k, m in enumerate(members):
        if m.ended:
            continue
        task = m.tasks[state.task]
        train, divergence = m.stats.read()
        m.stats.reset()
        val = evaluate(state.member_model(k), data, task.val_x, task.val_y, task.classes)
        if divergence is None and not math.isfinite(val["loss"]):
            divergence = lifecycle.Divergence(step, f"non-finite loss at step {step}")
        if divergence is not None:  # nothing of this log point is logged
            m.summary = {**m.summary, "diverged_at": divergence.step}
            m.ended = True
            if m.record.status not in schema.FINISHED:  # else a resumed trial got here again
                m.record.finish(
                    "diverged", divergence.reason, step=divergence.step, summary=m.summary
                )
            continue
        rows[k] = [("train", {**train, "task": task.index, **counts}), ("val", val)]
        if done % task.probe_every == 0 or task_end:
            rows[k] += [(split, probe()) for split, probe in m.probes.items()]
        if task_end:
            m.summary["task_train_acc"].append(train["acc"])
            m.summary["task_val_acc"].append(val["acc"])
    if task_end and state.task + 1 < len(members[0].tasks):
        reset_head(cfg, state.model, state.optimizer)
        state.task += 1
        for k, m in enumerate(members):  # the ended members' slices too: they keep stepping
            m.begin(m.tasks[state.task])
            if not m.ended:
                m.probes = task_probes(m.cfg, data, state.member_model(k), m.tasks[state.task])
                rows[k] += [(f"start_{split}", probe()) for split, probe in m.probes.items()]
    for k, member_rows in rows.items():
        if step > members[k].logged:
            for split, values in member_rows:
                members[k].record.log(step, values, split=split)
    means = {}
    for i, split in enumerate(("train", "val")):
        values = [member_rows[i][1] for member_rows in rows.values()]  # rows[k][:2]: train, val
        means[split] = {key: sum(v[key] for v in values) / max(len(values), 1) for key in MEANS}
        if cfg.pack > 1 and values:  # a sweep's live status reads the trial's rows
            sink.log(step, {**means[split], "members_live": float(len(values))}, split=split)
    return means


def _finish(cfg: Config, sink: RunRecord, state: ContinualState) -> dict:
    """End every member still running `completed`; a packed trial then ends `diverged` when a
    member diverged (naming them, as a bit-flip ensemble trial), else `completed`."""
    for k, m in enumerate(state.members):
        if m.ended:
            continue
        final = {"steps": state.step, "final_val_acc": m.summary["task_val_acc"][-1]}
        m.summary = {**m.summary, **final}
        if cfg.keep_final_checkpoint and cfg.pack > 1:  # a single run's is its last checkpoint
            m.record.save_checkpoint(state.step, state.state_dict(k))
        m.record.finish(
            "completed", summary=m.summary, keep_final_checkpoint=cfg.keep_final_checkpoint
        )
        m.ended = True
    if cfg.pack == 1:
        return state.members[0].summary
    diverged = [m.record.run_id for m in state.members if "diverged_at" in m.summary]
    summary = {
        "members": {m.record.run_id: m.summary for m in state.members},
        "member_dirs": [str(m.record.run_dir) for m in state.members],
        "steps": state.step,
    }
    sink.finish("diverged" if diverged else "completed", ", ".join(diverged), summary=summary)
    return summary


if __name__ == "__main__":
    cli.main("continual", Config, run)
