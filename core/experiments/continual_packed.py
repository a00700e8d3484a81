"""The packed continual-learning run (`pack=N`): the single runs of seeds seed .. seed+N-1 of one
configuration trained in one process as one `core.models.packed.PackedModel`, each member
computing its single run (docs/experiments.md, "Packed runs").

Member k is the run of the config with `seed=seed+k` and `pack=1`: its own class order and tasks,
initialisation, batch order, augmentation and dropout masks (from a generator seeded as the single
run seeds torch's global one), its own probe batches and divergence; the head reset, the
optimizer step and the log points are the single run's, done for all members at once (their
tasks have equal sizes, so their schedules coincide). One optimizer over the stacked parameters
updates every member as its own would (SGD and Adam act element by element). Evaluation and the
probe run per member on a single model holding member k's weights (`PackedModel.load_member`),
through the single run's own code.

Record: the trial's record (the sink) holds the packed config, the status, the summary (each
member's), the checkpoints (the stacked state of every member) and per log point the live
members' mean loss and accuracies (`members_live`: their count); member k's record,
`<run_dir>/members/seed<seed>/`, is its single run's record: its config (`pack=1`), rows, status
and summary, and with `keep_final_checkpoint` its final checkpoint in the single run's format. A
member that diverges ends its record `diverged` at that log point, as its single run would; the
others go on (the diverged member's slice keeps stepping, unlogged). Member rows are written at
the trial's checkpoints; after a kill the steps since the checkpoint are recomputed and the rows
a member already holds are not written again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.data import BatchOrder, ImageData, load_images
from core.experiments.classification import evaluate
from core.experiments.continual import Config, Task, reset_head, schedule, task_probes
from core.models import build_model
from core.models.packed import PackedModel, member_optimizer_state
from core.run import build, lifecycle, schema
from core.run.record import RunRecord, load_metrics
from core.run.seeds import seed_for

EXPERIMENT = "continual"
_STREAMS = ("order", "augment", "dropout")
METRICS = ("loss", "acc", "acc_unmasked")  # the trial's rows: the live members' means


def packed_masked_loss(
    out: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, remap: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per member, what `classification.masked_loss` gives for its batch: (loss, masked correct,
    unmasked correct), each (N,), from logits `out` (N, B, K), labels `y` (N, B), each member's
    task classes `classes` (N, k) and label lookup `remap` (N, K)."""
    n, b, _ = out.shape
    correct_all = (out.argmax(dim=2) == y).sum(dim=1)
    logits = out.gather(2, classes[:, None, :].expand(n, b, -1))  # (N, B, k)
    target = remap.gather(1, y)  # (N, B)
    losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    return losses.view(n, b).mean(dim=1), (logits.argmax(dim=2) == target).sum(dim=1), correct_all


@dataclass
class Member:
    """One member: its single run's config, record, schedule and state."""

    cfg: Config  # its single run's config (seed = the trial's seed + k, pack = 1)
    record: RunRecord
    tasks: list[Task]
    streams: dict[str, torch.Generator]  # order, augment, dropout (the single run: torch's RNG)
    order: BatchOrder
    stats: lifecycle.RunningStats
    summary: dict[str, Any] = field(
        default_factory=lambda: {"task_val_acc": [], "task_train_acc": []}
    )
    ended: bool = False  # its record is finished (diverged, or completed at the end)
    logged: int = -1  # the last step its record holds rows for
    probes: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "random": {name: g.get_state() for name, g in self.streams.items()},
            "order": self.order.state_dict(),
            "stats": self.stats.state_dict(),
            "summary": self.summary,
            "ended": self.ended,
        }

    def load_state_dict(self, state: dict[str, Any], task: Task) -> None:
        for name, g in self.streams.items():
            g.set_state(state["random"][name])
        self.order = BatchOrder(task.train_idx, self.order.batch_size, self.streams["order"])
        self.order.load_state_dict(state["order"])
        self.stats.load_state_dict(state["stats"])
        self.summary, self.ended = state["summary"], state["ended"]


@dataclass
class PackedState:
    """What the trial's checkpoint holds: the stacked model and optimizer, every member's state."""

    step: int
    task: int
    model: PackedModel
    optimizer: torch.optim.Optimizer
    members: list[Member]

    @property
    def summary(self) -> dict[str, Any]:
        return {m.record.run_id: m.summary for m in self.members}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "task": self.task,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "members": [m.state_dict() for m in self.members],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.task = state["step"], state["task"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for m, saved in zip(self.members, state["members"], strict=True):
            m.load_state_dict(saved, m.tasks[self.task])

    def member_checkpoint(self, k: int) -> dict[str, Any]:
        """Member k's state in the single run's checkpoint layout (its dropout generator under
        `random["dropout"]`, where a single run keeps torch's global RNG)."""
        m = self.members[k]
        return {
            "step": self.step,
            "task": self.task,
            "model": self.model.member_state_dict(k),
            "model_config": self.model.cfg.to_dict(),
            "optimizer": member_optimizer_state(self.model, self.optimizer.state_dict(), k),
            "interventions": {"counts": {}},
            "random": {name: g.get_state() for name, g in m.streams.items()},
            "order": m.order.state_dict(),
            "stats": m.stats.state_dict(),
            "summary": m.summary,
        }


def member_configs(cfg: Config) -> list[Config]:
    """The members' single-run configs: seeds seed .. seed+pack-1, pack=1."""
    return [dataclasses.replace(cfg, seed=cfg.seed + k, pack=1) for k in range(cfg.pack)]


def _check_schedules(schedules: list[list[Task]]) -> None:
    """The members step together: every task must have the same size for all of them."""
    first = schedules[0]
    for seed_tasks in schedules[1:]:
        for a, b in zip(first, seed_tasks, strict=True):
            if (len(a.classes), len(a.train_idx)) != (len(b.classes), len(b.train_idx)):
                raise ValueError(
                    f"pack: task {a.index} has {len(a.train_idx)} training images for one member "
                    f"and {len(b.train_idx)} for another (classes of unequal size); packed "
                    "members need tasks of equal size (cifar10, cifar100, tiny_imagenet, "
                    "synthetic), or pack=1"
                )


def train(cfg: Config, sink: RunRecord, progress: bool) -> dict:
    """The packed run on `sink` (module docstring); resumes from the sink's checkpoint."""
    device = lifecycle.resolve_device(cfg.device)
    data = load_images(cfg.dataset, cfg.data_root, cfg.download, cfg.synthetic, device)
    configs = member_configs(cfg)
    schedules = [schedule(c, data) for c in configs]
    _check_schedules(schedules)
    model_cfg = cfg.model.model_config(data.shape, data.num_classes)
    sink.write_config(cfg, EXPERIMENT, device=str(device))  # only now: see continual._train

    members = []
    for c, tasks in zip(configs, schedules):
        name = f"seed{c.seed}"
        record = RunRecord(
            schema.members_dir(sink.run_dir) / name,
            run_id=f"{sink.run_id}/{name}",
            flush_rows=2**62,  # rows are written at the trial's checkpoints only
        )
        record.write_config(c, EXPERIMENT, device=str(device))
        streams = lifecycle.generators(c.seed, device, _STREAMS)
        members.append(
            Member(
                cfg=c,
                record=record,
                tasks=tasks,
                streams=streams,
                order=BatchOrder(tasks[0].train_idx, cfg.batch_size, streams["order"]),
                stats=lifecycle.RunningStats(device, cfg.divergence_ceiling),
            )
        )
    singles = [build_model(model_cfg, seed=seed_for(c.seed, "init")) for c in configs]
    model = PackedModel(singles, [m.streams["dropout"] for m in members]).to(device)
    view = singles[0].to(device)  # a single model: member k's weights for evaluation and probes
    optimizer = build.build_optimizer(cfg.optimizer, model.parameters())
    state = PackedState(step=0, task=0, model=model, optimizer=optimizer, members=members)
    classes = [torch.stack([m.tasks[i].classes for m in members]) for i in range(len(schedules[0]))]
    remaps = [torch.stack([m.tasks[i].remap for m in members]) for i in range(len(classes))]

    saved = sink.load_checkpoint()
    if saved is not None:
        state.load_state_dict(saved[1])
    for m in members:
        frame = load_metrics(m.record.run_dir)
        m.logged = int(frame["step"].max()) if len(frame) else -1
        if m.record.status in schema.FINISHED:  # finished after the checkpoint: nothing to add
            m.ended, m.summary = True, m.record.status_info["summary"]
    if saved is None:
        reset_head(cfg, model.body, optimizer)
    for k, m in enumerate(members):
        m.probes = task_probes(m.cfg, data, view, m.tasks[state.task])
        if saved is None and not m.ended and m.logged < 0:
            model.load_member(k, view)
            for split, probe in m.probes.items():
                m.record.log(0, probe(), split=f"start_{split}")
    sink.set_status("running")
    for m in members:
        if not m.ended:
            m.record.set_status("running")

    timing = schedules[0]  # the members' tasks begin and end at the same steps
    total = timing[-1].end
    checkpoints = lifecycle.CheckpointPolicy(
        state.step, cfg.checkpoint_every, cfg.checkpoint_minutes
    )
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc=f"pack {cfg.pack}")
    model.train()
    while state.step < total and not all(m.ended for m in members):
        task = timing[state.task]
        xs, ys = [], []
        for m in members:
            idx = m.order.next()
            xs.append(data.inputs(data.train_x[idx], m.streams["augment"], augment=cfg.augment))
            ys.append(data.train_y[idx])
        x, y = torch.stack(xs), torch.stack(ys)
        losses, correct, correct_all = packed_masked_loss(
            model(x), y, classes[state.task], remaps[state.task]
        )
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # member k's parameters get the gradient of its own loss
        optimizer.step()
        state.step += 1
        for k, m in enumerate(members):
            if not m.ended:
                m.stats.add(state.step, losses[k], correct[k], correct_all[k], y.shape[1])

        done = state.step - task.begin
        task_end = state.step == task.end
        if done % task.log_every and not task_end:
            continue
        _log_point(cfg, sink, state, data, view, done, task_end)
        if state.step == total or checkpoints.due(state.step):
            for m in members:
                m.record.flush()
            checkpoints.save(sink, state.step, state)
        bar.update(state.step - bar.n)
    bar.close()
    return _finish(cfg, sink, state)


def _log_point(
    cfg: Config,
    sink: RunRecord,
    state: PackedState,
    data: ImageData,
    view: nn.Module,
    done: int,
    task_end: bool,
) -> None:
    """Each live member's rows of this log point, as its single run's loop computes them (and
    the trial's: the live members' mean loss and accuracies, their count); at a task end every
    member moves to its next task (head reset, batch order, probes)."""
    step, members = state.step, state.members
    rows: dict[int, list[tuple[str, dict[str, float]]]] = {}
    for k, m in enumerate(members):
        if m.ended:
            continue
        task = m.tasks[state.task]
        train_row, divergence = m.stats.read()
        m.stats.reset()
        state.model.load_member(k, view)
        val = evaluate(view, data, task.val_x, task.val_y, task.classes)
        if divergence is None and not math.isfinite(val["loss"]):
            divergence = lifecycle.Divergence(step, f"non-finite loss at step {step}")
        if divergence is not None:
            m.summary = {**m.summary, "diverged_at": divergence.step}
            m.ended = True
            if m.record.status not in schema.FINISHED:  # else a resumed trial got here again
                m.record.finish(
                    "diverged", divergence.reason, step=divergence.step, summary=m.summary
                )
            continue
        rows[k] = [("train", {**train_row, "task": task.index}), ("val", val)]
        if done % task.probe_every == 0 or task_end:
            rows[k] += [(split, probe()) for split, probe in m.probes.items()]
        if task_end:
            m.summary["task_train_acc"].append(train_row["acc"])
            m.summary["task_val_acc"].append(val["acc"])
    if task_end and state.task + 1 < len(members[0].tasks):
        reset_head(cfg, state.model.body, state.optimizer)
        state.task += 1
        for k, m in enumerate(members):  # the ended members' slices too: they keep stepping
            task = m.tasks[state.task]
            m.order = BatchOrder(task.train_idx, cfg.batch_size, m.streams["order"])
            if m.ended:
                continue
            state.model.load_member(k, view)
            m.probes = task_probes(m.cfg, data, view, task)
            rows[k] += [(f"start_{split}", probe()) for split, probe in m.probes.items()]
    for k, member_rows in rows.items():
        if step > members[k].logged:
            for split, values in member_rows:
                members[k].record.log(step, values, split=split)
    for i, split in enumerate(("train", "val")):  # a sweep's live status reads the sink's rows
        values = [member_rows[i][1] for member_rows in rows.values()]  # rows[k][:2]: train, val
        if values:
            means = {key: sum(v[key] for v in values) / len(values) for key in METRICS}
            sink.log(step, {**means, "members_live": float(len(values))}, split=split)


def _finish(cfg: Config, sink: RunRecord, state: PackedState) -> dict:
    """End every member still running `completed`, then the trial (`diverged` when a member
    diverged, naming them, as a bit-flip ensemble trial)."""
    for k, m in enumerate(state.members):
        if m.ended:
            continue
        m.summary = {
            **m.summary,
            "steps": state.step,
            "final_val_acc": m.summary["task_val_acc"][-1],
        }
        if cfg.keep_final_checkpoint:
            m.record.save_checkpoint(state.step, state.member_checkpoint(k))
        m.record.finish(
            "completed", summary=m.summary, keep_final_checkpoint=cfg.keep_final_checkpoint
        )
        m.ended = True
    diverged = [m.record.run_id for m in state.members if "diverged_at" in m.summary]
    summary = {
        "members": state.summary,
        "member_dirs": [str(m.record.run_dir) for m in state.members],
        "steps": state.step,
    }
    sink.finish("diverged" if diverged else "completed", ", ".join(diverged), summary=summary)
    return summary
