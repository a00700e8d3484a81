r"""Class-incremental continual learning (paper §3.1, paper_spec §7.1).

The classes are split into tasks of `classes_per_task` in a seeded order; one model and one
optimizer learn the tasks in sequence. At each task start the head is zeroed and, unless
`reset_head_optimizer=false` (the reference behaviour), the optimizer state of the head too, so no
Adam moment of an earlier task moves the fresh head. Loss and accuracy are masked to the task's
classes; the accuracy over all logits is logged as `acc_unmasked`.

Run (paper scale: Tiny ImageNet under $LOP_DATA, 40 tasks x 500 epochs, hours on an A100):

    python -m core.experiments.continual model.arch=resnet optimizer.lr=1e-3 seed=40

Smoke run (seconds on a CPU):

    python -m core.experiments.continual dataset=synthetic model.arch=mlp \
        model.hidden_sizes=32,32 classes_per_task=2 task_length=3 device=cpu

Rows (split, metric), at step s = optimizer steps done:
  train: loss, acc, acc_unmasked (means over the steps since the last log point), task,
         cbp_replaced (units CBP replaced since the last log point; with cbp.enabled)
  val:   loss, acc, acc_unmasked on the task's whole evaluation split, in eval mode
  train / val, "<layer>/<metric>": the metrics probe on the task's train / val probe batch
  start_train / start_val, "<layer>/<metric>": the probe at the task start, after the head reset
  the probe's whole-model rows: probe_loss, probe_accuracy, probe_accuracy_unmasked (masked loss)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from tqdm import tqdm

from core.data import BatchOrder, indices_of, stratified_indices, task_classes
from core.experiments import cli
from core.experiments.training import (
    Dataset,
    OptimizerSpec,
    RunningStats,
    TrainingConfig,
    build_optimizer,
    class_remap,
    evaluate,
    make_probe,
    masked_loss,
    model_config,
    open_run,
    random_state,
    run_recorded,
    seeded_generators,
    set_random_state,
)
from core.models import build_model
from core.optim import ContinualBackprop
from core.records import RunRecord


@dataclass(frozen=True)
class CBPSpec:
    """Continual Backprop (`core.optim.ContinualBackprop`) after every optimizer step."""

    enabled: bool = False  # run CBP's generate-and-test after each step
    replacement_rate: float = 1e-4  # fraction of mature units replaced per step
    maturity: int = 100  # steps before a unit may be replaced
    decay: float = 0.99  # running-average decay of the utilities
    util_type: str = "contribution"  # see core.optim.UTIL_TYPES


@dataclass(frozen=True)
class Config(TrainingConfig):
    """A continual-learning run; every field is a `key=value` override.

    The shared fields (data, model, batch, probe, checkpoints, seed, device) are those of
    `TrainingConfig`; `log_every=None` is one epoch of a task, `probe_every` counts `task_unit`s,
    the probe batches are drawn per task.
    """

    dataset: Dataset = "tiny_imagenet"  # the image dataset (docs/data.md)
    # one optimizer for the whole run
    optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(name="adam", lr=1e-3))
    classes_per_task: int = 5  # classes of each task
    num_tasks: int | None = None  # tasks to run (None: every class once)
    task_length: int = 500  # length of each task, in task_unit
    task_unit: Literal["epochs", "steps"] = "epochs"  # reference code: epochs; paper: steps
    reset_head: bool = True  # zero the head's weights and bias at every task start
    reset_head_optimizer: bool = True  # also drop the head's optimizer state (false: reference)
    cbp: CBPSpec = field(default_factory=CBPSpec)  # optional Continual Backprop

    positive_fields: ClassVar[tuple[str, ...]] = (
        *TrainingConfig.positive_fields,
        "task_length",
        "classes_per_task",
    )


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict:
    """Run (or resume, from `sink`'s last checkpoint) the continual-learning experiment."""
    return run_recorded(_run, cfg, sink, progress)


def _run(cfg: Config, sink: RunRecord, progress: bool) -> dict:
    device, data = open_run(cfg, sink)
    tasks = [
        c.to(device)
        for c in task_classes(data.num_classes, cfg.classes_per_task, cfg.seed, cfg.num_tasks)
    ]
    model_cfg = model_config(cfg.model, data)
    model = build_model(model_cfg, seed=cfg.seed).to(device)
    head = list(model.head.parameters())
    generators = seeded_generators(cfg.seed, device, ("order", "augment", "noise"))
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), generators["noise"])
    cbp = None
    if cfg.cbp.enabled:
        cbp = ContinualBackprop(
            model,
            optimizer,
            replacement_rate=cfg.cbp.replacement_rate,
            decay=cfg.cbp.decay,
            maturity=cfg.cbp.maturity,
            util_type=cfg.cbp.util_type,
            generator=torch.Generator().manual_seed(cfg.seed + 4),
        )
    torch.manual_seed(cfg.seed)  # dropout draws from the global RNG, checkpointed below

    train_idx = [indices_of(data.train_y, c) for c in tasks]
    val_idx = [indices_of(data.test_y, c) for c in tasks]
    spe = [-(-len(i) // cfg.batch_size) for i in train_idx]  # steps per epoch of each task
    length = [cfg.task_length * (s if cfg.task_unit == "epochs" else 1) for s in spe]
    ends = list(itertools.accumulate(length))  # global step at which each task ends
    begins = [0, *ends[:-1]]
    log_every = [cfg.log_every or s for s in spe]
    probe_every = [cfg.probe_every * (s if cfg.task_unit == "epochs" else 1) for s in spe]

    def probes(t: int) -> dict[str, object]:
        """The train and val probes of task t (stratified batches, fixed per task and seed)."""
        seed = cfg.seed * 1_000_003 + 2 * t
        out = {}
        for i, (split, x, y) in enumerate(
            (("train", data.train_x, data.train_y), ("val", data.test_x, data.test_y))
        ):
            g = torch.Generator().manual_seed(seed + i)
            idx = stratified_indices(y, tasks[t], cfg.probe_size, g)
            x_probe = data.inputs(x[idx])
            out[split] = make_probe(model, x_probe, y[idx], cfg.probe, seed + i, tasks[t])
        return out

    def begin_task(t: int, step: int) -> dict[str, object]:
        """Reset the head (and its optimizer state), probe the task's batches; its probes."""
        if cfg.reset_head:
            with torch.no_grad():
                for p in head:
                    p.zero_()
        if cfg.reset_head_optimizer:
            for p in head:
                optimizer.state.pop(p, None)
        task_probes = probes(t)
        for split, probe in task_probes.items():
            sink.log(step, probe(), split=f"start_{split}")
        return task_probes

    state = sink.load_checkpoint()
    summary: dict = {"task_val_acc": [], "task_train_acc": []}
    if state is None:
        step, task = 0, 0
        task_probes = begin_task(0, 0)
        order = BatchOrder(train_idx[0], cfg.batch_size, generators["order"])
    else:
        step, saved = state
        task = saved["task"]
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        set_random_state(generators, saved["random"])
        order = BatchOrder(train_idx[task], cfg.batch_size, generators["order"])
        order.load_state_dict(saved["order"])
        summary = saved["summary"]
        if cbp is not None:
            cbp.load_state_dict(saved["cbp"])
        task_probes = probes(task)
    sink.set_status("running")

    remap = class_remap(tasks[task], data.num_classes)
    val_x, val_y = data.test_x[val_idx[task]], data.test_y[val_idx[task]]
    stats = RunningStats(device)
    replaced = 0  # CBP replacements since the last log point
    last_checkpoint = step
    bar = tqdm(total=ends[-1], initial=step, disable=not progress, desc="continual")
    model.train()
    while step < ends[-1]:
        idx = order.next()
        x = data.inputs(data.train_x[idx], generators["augment"], augment=cfg.augment)
        y = data.train_y[idx]
        loss, correct, correct_all = masked_loss(model(x), y, tasks[task], remap)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cbp is not None:
            replaced += cbp.step()
        step += 1
        stats.add(step, loss, correct, correct_all, len(idx))

        done = step - begins[task]
        task_end = step == ends[task]
        if done % log_every[task] and not task_end:
            continue
        train, bad_step = stats.read()
        stats.reset()
        val = evaluate(model, data, val_x, val_y, tasks[task])
        if bad_step is None and not math.isfinite(val["loss"]):
            bad_step = step  # finite losses, but the last update left non-finite weights
        if bad_step is not None:
            summary = {**summary, "diverged_at": bad_step}
            sink.set_status(
                "diverged", f"non-finite loss at step {bad_step}", step=bad_step, summary=summary
            )
            bar.close()
            return summary
        extra = {"task": task} if cbp is None else {"task": task, "cbp_replaced": replaced}
        replaced = 0
        sink.log(step, {**train, **extra}, split="train")
        sink.log(step, val, split="val")
        if done % probe_every[task] == 0 or task_end:
            for split, probe in task_probes.items():
                sink.log(step, probe(), split=split)
        bar.update(step - bar.n)
        bar.set_postfix(
            task=task,
            loss=f"{train['loss']:.3f}",
            acc=f"{train['acc']:.3f}",
            val_acc=f"{val['acc']:.3f}",
        )
        if task_end:
            summary["task_train_acc"].append(train["acc"])
            summary["task_val_acc"].append(val["acc"])
            if task + 1 < len(tasks):
                task += 1
                task_probes = begin_task(task, step)
                remap = class_remap(tasks[task], data.num_classes)
                val_x, val_y = data.test_x[val_idx[task]], data.test_y[val_idx[task]]
                order = BatchOrder(train_idx[task], cfg.batch_size, generators["order"])
        if step - last_checkpoint >= cfg.checkpoint_every or step == ends[-1]:
            sink.save_checkpoint(
                step,
                {
                    "task": task,
                    "model": model.state_dict(),
                    "model_config": model_cfg.to_dict(),
                    "optimizer": optimizer.state_dict(),
                    "random": random_state(generators),
                    "order": order.state_dict(),
                    "summary": summary,
                    **({} if cbp is None else {"cbp": cbp.state_dict()}),
                },
            )
            last_checkpoint = step
    bar.close()
    summary = {**summary, "steps": step, "final_val_acc": summary["task_val_acc"][-1]}
    sink.set_status("completed", summary=summary)
    return summary


if __name__ == "__main__":
    cli.main("continual", Config, run)
