r"""Cloning: a base trained, expanded onto the cloning manifold, then base and clone trained side by
side (paper §2 and §4).

Phase 1 trains the base for `base_epochs`. At the expansion the clone is `core.cloning.expand(base,
factor)` (rebuilt with `clone_dropout` when given) and gets its own fresh optimizer
(`clone_optimizer`: sgd, adam or noisy_sgd; optionally with the per-tensor LR multipliers under
which SGD on the clone tracks the base). Phase 2 trains both for `clone_epochs` on the same batches
(same images, same augmentation); the base keeps its optimizer state.

Interventions: `cbp.*`, `redo.*` and `shrink_perturb.*` apply to every model the run trains: to
the base from step 1, and to the clone from the expansion, each model with its own instance and
its own random streams (the clone's start fresh at the expansion). L2 is `optimizer.weight_decay`
for the base and `clone_optimizer.weight_decay` for the clone.

Run (paper scale: CIFAR-10 under $LOP_DATA, 20 + 500 epochs, hours on an A100):

    python -m core.experiments.cloning model.arch=mlp clone_optimizer.name=noisy_sgd \
        clone_optimizer.sigma0=0.01 clone_optimizer.decay=0.999 seed=40

Smoke run (seconds on a CPU):

    python -m core.experiments.cloning dataset=synthetic model.arch=mlp model.hidden_sizes=16,16 \
        base_epochs=2 clone_epochs=2 device=cpu

Rows (split, metric), split = "<model>_<data>" with model in {base, clone}, data in {train, test}:
  base_train / clone_train: loss, acc (means over the steps since the last log point),
                            "<layer>/cbp_replaced", "<layer>/redo_reset" (with the intervention)
  base_test / clone_test:   loss, acc on the whole test split, in eval mode
  base_* / clone_*, "<layer>/<metric>": the metrics probe on the train / test probe batch
                                        (and its probe_loss, probe_accuracy)
  clone_train (at the expansion and every probe_every epochs; on the train probe batch):
    manifold_distance, "<layer>/r2_forward", "<layer>/r2_backward", r2_mean (cloning score),
    max_abs_diff_output, max_abs_diff_loss, max_abs_diff_input_grad,
    "<layer>/max_abs_diff_forward", "<layer>/max_abs_diff_backward" (base vs clone)

Checkpoint state: "model_config" and "model" are the clone's (the base's before the expansion),
"base_config" and "base" the base's; plus both optimizers and interventions, every RNG state and
the batch order.

Random streams (`core.run.seeds.seed_for(seed, purpose, ...)`): "init", "order", "augment",
"noise", "cbp", "redo", "shrink_perturb", "dropout" (index 0 for the base's, 1 for the clone's;
dropout draws from torch's global RNG, swapped to the model's own state around its forward:
`core.run.lifecycle.DropoutStream`) and "probe" (the probe batches, never shared with the training
streams). No stream is shared by the two models, so each model's computation is the same in one
run or split.

Split (`part`, `base_from`): the base's whole trajectory depends on every config field but the
clone's (`CLONE_FIELDS`), so runs that differ only there can share one base.
  part=all    (default) base and clone in one run, as above
  part=base   the base alone, both phases (base_epochs + clone_epochs), its rows and status as a
              part=all run would write them for the base, and under `base_states/` the base's
              state at the expansion (with the batch order and augmentation streams) and at each
              later clone check (`core.run.schema.base_state_path`)
  part=clone  with base_from=<a finished part=base record>: the clone alone, from the base's
              expansion state; the base-vs-clone checks against the base's saved states; the
              base's rows copied in, so that its record equals the part=all run's (rows, status,
              summary). A base_from run with another base config (any field but CLONE_FIELDS,
              part, base_from) is refused, naming the fields, before any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from core.cloning import cloning_score, compare, expand, manifold_distance, param_groups
from core.data import BatchOrder, load_images, stratified_indices
from core.experiments.classification import classification_probe, evaluate, masked_loss
from core.experiments.image_config import ImageConfig
from core.models import ModelConfig, build_model
from core.run import build, cli, lifecycle, precision, schema
from core.run.record import RunRecord, jsonable, load_metrics
from core.run.seeds import seed_for
from core.run.specs import OptimizerSpec

MODELS = ("base", "clone")  # index i: the model's streams are seed_for(seed, purpose, i)
PARTS = ("all", schema.SHARED_BASE, "clone")
CLONE_FIELDS = ("clone_optimizer", "clone_dropout", "lr_multipliers", "factor")  # clone's only
SPLIT_FIELDS = schema.SPLIT_KEYS


@dataclass(frozen=True)
class Config(ImageConfig):
    """A cloning run; every field is a `key=value` override.

    The shared fields and their defaults (CIFAR-10, SGD 0.01 with momentum 0.9) are those of
    `ImageConfig`: `model` is the base's architecture, `optimizer` the base's (both phases),
    `probe_every` counts epochs (the clone checks run at the same cadence).
    """

    clone_optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)  # the clone's, fresh
    clone_dropout: float | None = None  # the clone's dropout (None: the base's model.dropout)
    lr_multipliers: bool = False  # clone LR per tensor x core.cloning.lr_multipliers
    factor: int = 2  # width expansion factor
    base_epochs: int = 20  # phase 1: base alone
    clone_epochs: int = 500  # phase 2: base and clone side by side
    part: str = "all"  # all: base and clone; base: the base alone; clone: the clone from base_from
    base_from: str | None = None  # part=clone: the record dir of the part=base run to start from

    positive_fields: ClassVar[tuple[str, ...]] = (*ImageConfig.positive_fields, "clone_epochs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 2 or self.base_epochs < 0:
            raise ValueError("factor must be >= 2 and base_epochs >= 0")
        if self.part not in PARTS:
            raise ValueError(f"part={self.part!r}; valid: {', '.join(PARTS)}")
        if (self.part == "clone") != (self.base_from is not None):
            raise ValueError(
                "base_from (the record dir of a part=base run) goes with part=clone, and only "
                f"with it (got part={self.part}, base_from={self.base_from})"
            )


def base_keys(cfg: Config) -> dict[str, Any]:
    """The config fields the base's trajectory depends on (all but CLONE_FIELDS, SPLIT_FIELDS),
    as config.json holds them."""
    skip = (*CLONE_FIELDS, *SPLIT_FIELDS)
    return {k: v for k, v in json.loads(json.dumps(jsonable(cfg))).items() if k not in skip}


def _save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class BaseRun:
    """The finished part=base record a part=clone run starts from: its status and its rows by
    step, as [(split, {key: value})]."""

    run_dir: Path
    status: dict[str, Any]
    rows: dict[int, list[tuple[str, dict[str, float]]]]

    def state(self, step: int) -> dict[str, Any]:
        path = schema.base_state_path(self.run_dir, step)
        return torch.load(path, map_location="cpu", weights_only=True)

    def summary_at(self, step: int) -> dict[str, float]:
        """The base's summary entries at the log point `step` (from its rows, or from its status
        when it diverged there: a diverging interval logs no rows)."""
        values = {split: v for split, v in self.rows.get(step, ()) if "acc" in v}
        if "base_test" in values:
            return {
                "base_test_acc": values["base_test"]["acc"],
                "base_train_loss": values["base_train"]["loss"],
            }
        if self.status["status"] != "diverged" or self.status["step"] > step:
            return {}
        summary = self.status["summary"]
        return {k: summary[k] for k in ("base_test_acc", "base_train_loss") if k in summary}


def open_base(cfg: Config) -> BaseRun:
    """The base record of a part=clone run, checked: a finished part=base cloning run whose
    config equals `cfg` in every base key (ValueError naming what differs)."""
    run_dir = Path(cfg.base_from)
    try:
        document = schema.read_config(run_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"base_from={run_dir}: no readable run record there ({err})") from None
    theirs = document["config"]
    if document.get("experiment") != "cloning" or theirs.get("part") != schema.SHARED_BASE:
        raise ValueError(
            f"base_from={run_dir} is no part=base cloning run (experiment "
            f"{document.get('experiment')}, part {theirs.get('part')})"
        )
    ours = base_keys(cfg)
    theirs = {k: v for k, v in theirs.items() if k not in (*CLONE_FIELDS, *SPLIT_FIELDS)}
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        diff = "; ".join(f"{k}: {theirs.get(k)} there, {ours.get(k)} here" for k in differ)
        raise ValueError(f"base_from={run_dir} ran another base ({diff})")
    status = schema.read_status(run_dir)
    if status is None or status["status"] not in schema.FINISHED:
        found = None if status is None else status["status"]
        raise ValueError(f"base_from={run_dir} is not finished (status {found}): run it first")
    rows: dict[int, list[tuple[str, dict[str, float]]]] = {}
    frame = load_metrics(run_dir)
    for (step, split), group in frame.groupby(["step", "split"], sort=True):
        keys = [f"{la}/{m}" if la else m for la, m in zip(group["layer"], group["metric"])]
        rows.setdefault(int(step), []).append((split, dict(zip(keys, group["value"]))))
    return BaseRun(run_dir, status, rows)


@dataclass
class Learner:
    """One trained model with its optimizer, interventions and running loss/accuracy."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    interventions: build.Interventions
    stats: lifecycle.RunningStats
    forward: Callable[[torch.Tensor], torch.Tensor]  # the training forward (core.run.precision)
    dropout: lifecycle.DropoutStream

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "interventions": self.interventions.state_dict(),
            "stats": self.stats.state_dict(),
            "dropout": self.dropout.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.interventions.load_state_dict(state["interventions"])
        self.stats.load_state_dict(state["stats"])
        self.dropout.state = list(state["dropout"])


def learner(cfg: Config, model: nn.Module, name: str, streams: dict) -> Learner:
    """The Learner of `model` (the base or the clone) with its optimizer and interventions."""
    device = next(model.parameters()).device
    index = MODELS.index(name)
    forward = precision.training_forward(model, cfg.precision, device)
    if name == "base":
        spec, params = cfg.optimizer, model.parameters()
    else:
        spec = cfg.clone_optimizer
        params = param_groups(model, spec.lr) if cfg.lr_multipliers else model.parameters()
    optimizer = build.build_optimizer(spec, params, streams[f"{name}_noise"])
    return Learner(
        model,
        optimizer,
        build.build_interventions(
            cfg, model, optimizer, build.intervention_streams(cfg.seed, device, index)
        ),
        lifecycle.RunningStats(device, cfg.divergence_ceiling),
        forward,
        lifecycle.DropoutStream(cfg.seed, device, index),
    )


def clone_of(base: nn.Module, cfg: Config) -> nn.Module:
    """`expand(base, factor)`, rebuilt with the clone's dropout (dropout holds no parameters)."""
    clone_cfg = base.cfg.widened(cfg.factor)
    if cfg.clone_dropout is not None:
        clone_cfg = dataclasses.replace(clone_cfg, dropout=cfg.clone_dropout)
    clone = build_model(clone_cfg, seed=seed_for(cfg.seed, "init", 1))
    clone.load_state_dict(expand(base, cfg.factor).state_dict())
    return clone.to(next(base.parameters()).device)


def clone_checks(base: nn.Module, clone: nn.Module, x, y) -> dict[str, float]:
    """Cloning score, manifold distance and base-vs-clone differences, in eval mode."""
    modes = base.training, clone.training
    base.eval()
    clone.eval()
    out = {"manifold_distance": manifold_distance(clone), **cloning_score(clone, x, y)}
    layers = {layer.name for layer in base.declared_layers()}
    for key, value in compare(base, clone, x, y).items():
        if key in layers:
            continue  # the max of its forward and backward entries
        layer, _, kind = key.rpartition("/")
        out[f"{layer}/max_abs_diff_{kind}" if layer else f"max_abs_diff_{kind}"] = value
    base.train(modes[0])
    clone.train(modes[1])
    return out


@dataclass
class CloningState:
    """Everything a checkpoint of the run holds (the state after `step` steps), and the config
    that builds the clone of a checkpoint taken after the expansion."""

    cfg: Config
    step: int
    base: Learner | None  # None in a part=clone run
    clone: Learner | None  # None before the expansion, and in a part=base run
    streams: dict[str, torch.Generator]  # order, augment, base_noise, clone_noise
    order: BatchOrder
    summary: dict[str, Any]

    def learners(self) -> dict[str, Learner]:
        """The models this run trains now, base first."""
        both = {"base": self.base, "clone": self.clone}
        return {name: x for name, x in both.items() if x is not None}

    def state_dict(self) -> dict[str, Any]:
        current = (self.clone or self.base).model
        base = {} if self.base is None else {
            "base_config": self.base.model.cfg.to_dict(),
            "base": self.base.model.state_dict(),
        }  # fmt: skip
        return {
            "step": self.step,
            "model_config": current.cfg.to_dict(),
            "model": current.state_dict(),
            **base,
            "learners": {name: x.state_dict() for name, x in self.learners().items()},
            "random": {name: g.get_state() for name, g in self.streams.items()},
            "order": self.order.state_dict(),
            "summary": self.summary,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cfg, self.step = self.cfg, state["step"]
        if self.base is not None:
            self.base.model.load_state_dict(state["base"])
        if "clone" in state["learners"]:
            clone_cfg = ModelConfig(**state["model_config"])
            clone = build_model(clone_cfg, seed=seed_for(cfg.seed, "init", 1))
            clone.load_state_dict(state["model"])
            device = lifecycle.resolve_device(cfg.device)
            self.clone = learner(cfg, clone.to(device).train(), "clone", self.streams)
        for name, x in self.learners().items():
            x.load_state_dict(state["learners"][name])
        for name, g in self.streams.items():
            g.set_state(state["random"][name])
        self.order.load_state_dict(state["order"])
        self.summary = state["summary"]


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict:
    """Run (or resume, from `sink`'s last checkpoint) the cloning experiment."""
    with precision.precision_scope(cfg.precision, lifecycle.resolve_device(cfg.device)):
        return lifecycle.run_recorded(_train, cfg, sink, progress)


def _train(cfg: Config, sink: RunRecord, progress: bool) -> dict:
    base_run = open_base(cfg) if cfg.part == "clone" else None  # checked before any work
    device = lifecycle.resolve_device(cfg.device)
    data = load_images(cfg.dataset, cfg.data_root, cfg.download, cfg.synthetic, device)
    base_cfg = cfg.model.model_config(data.shape, data.num_classes)
    # config.json only now: missing data or a model unfit for it leaves no record behind
    sink.write_config(cfg, "cloning", device=str(device))

    base = build_model(base_cfg, seed=seed_for(cfg.seed, "init")).to(device)
    streams = lifecycle.generators(cfg.seed, device, ("order", "augment"))
    for i, name in enumerate(MODELS):
        streams[f"{name}_noise"] = torch.Generator(device).manual_seed(
            seed_for(cfg.seed, "noise", i)
        )
    order = BatchOrder(
        torch.arange(len(data.train_y), device=device), cfg.batch_size, streams["order"]
    )
    trained_base = None if base_run is not None else learner(cfg, base, "base", streams)
    state = CloningState(cfg, 0, trained_base, None, streams, order, {})

    epoch = order.steps_per_epoch
    expand_step = cfg.base_epochs * epoch
    total = expand_step + cfg.clone_epochs * epoch
    log_every = cfg.log_every or epoch
    probe_every = cfg.probe_every * epoch
    classes = torch.arange(data.num_classes, device=device)
    g = torch.Generator().manual_seed(seed_for(cfg.seed, "probe"))
    probe_data = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        idx = stratified_indices(y, classes, cfg.probe_size, g)
        probe_data[split] = (data.inputs(x[idx]), y[idx])

    def probes_of(name: str, model: nn.Module) -> dict[str, Any]:
        out = {}
        for i, (split, (x, y)) in enumerate(probe_data.items()):
            rows = torch.Generator().manual_seed(seed_for(cfg.seed, "probe", MODELS.index(name), i))
            out[f"{name}_{split}"] = classification_probe(model, x, y, cfg.probe, rows)
        return out

    def base_at(step: int) -> nn.Module:
        """The base after `step` steps (a part=clone run reads it from its base's record)."""
        if base_run is not None:
            base.load_state_dict(base_run.state(step)["base"])
        return base

    def expansion() -> list[tuple[str, dict[str, float]]]:
        """Create the clone (part=base: save what the clone runs start from); the rows logged at
        the expansion."""
        if cfg.part == "base":
            start = {k: streams[k].get_state() for k in ("order", "augment")}
            start = {"base": base.state_dict(), "order": order.state_dict(), "streams": start}
            _save(schema.base_state_path(sink.run_dir, expand_step), start)
            return []
        source = base_at(expand_step)
        state.clone = learner(cfg, clone_of(source, cfg).train(), "clone", streams)
        probes.update(probes_of("clone", state.clone.model))
        checks = clone_checks(source, state.clone.model, *probe_data["train"])
        rows = [(split, probes[split]()) for split in ("clone_train", "clone_test")]
        return [*rows, ("clone_train", checks)]

    probes = {} if base_run is not None else probes_of("base", base)
    saved = sink.load_checkpoint()
    if saved is None and base_run is not None:  # the clone from its base's expansion
        info = base_run.status
        if info["status"] == "diverged" and info["step"] <= expand_step:  # never expanded
            for step in sorted(base_run.rows):
                for split, values in base_run.rows[step]:
                    sink.log(step, values, split=split)
            extra = {"step": info["step"], "summary": info["summary"]}
            sink.finish("diverged", info["reason"], keep_final_checkpoint=False, **extra)
            return info["summary"]
        start = base_run.state(expand_step)
        order.load_state_dict(start["order"])
        for name, stream_state in start["streams"].items():
            streams[name].set_state(stream_state)
        state.step = expand_step
        state.summary.update(base_run.summary_at(expand_step))
        for step in sorted(s for s in base_run.rows if s <= expand_step):
            for split, values in base_run.rows[step]:
                sink.log(step, values, split=split)
        for split, values in expansion():
            sink.log(expand_step, values, split=split)
    elif saved is None:
        rows = [(split, probe()) for split, probe in probes.items()]
        if expand_step == 0:
            rows += expansion()
        for split, values in rows:
            sink.log(0, values, split=split)
    else:
        state.load_state_dict(saved[1])
        if state.clone is not None:
            probes.update(probes_of("clone", state.clone.model))
    sink.set_status("running")

    checkpoints = lifecycle.CheckpointPolicy(
        state.step, cfg.checkpoint_every, cfg.checkpoint_minutes
    )
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc="cloning")
    base.train()
    while state.step < total:
        idx = order.next()
        x = data.inputs(data.train_x[idx], streams["augment"], augment=cfg.augment)
        y = data.train_y[idx]
        state.step += 1
        for trained in state.learners().values():
            with trained.dropout.drawing():
                loss, correct, _ = masked_loss(trained.forward(x), y, None, None)
            trained.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trained.optimizer.step()
            trained.interventions.step()
            trained.stats.add(state.step, loss, correct, correct, len(idx))

        step = state.step
        phase_end = step in (expand_step, total)
        since = step - expand_step if step > expand_step else step
        if since % log_every and not phase_end:
            continue
        rows, divergence = [], None
        if base_run is not None:  # the base's rows of this log point, or its divergence
            info = base_run.status
            if info["status"] == "diverged" and info["step"] <= step:
                divergence = lifecycle.Divergence(info["step"], info["reason"])
                state.summary["diverged_model"] = "base"
            rows += base_run.rows.get(step, [])
            state.summary.update(base_run.summary_at(step))
        for name, trained in state.learners().items():
            train, diverged = trained.stats.read()
            trained.stats.reset()
            test = evaluate(trained.model, data, data.test_x, data.test_y)
            if diverged is None and not math.isfinite(test["loss"]):
                diverged = lifecycle.Divergence(step, f"non-finite loss at step {step}")
            if diverged is not None and (divergence is None or diverged.step < divergence.step):
                divergence = lifecycle.Divergence(diverged.step, f"{name}: {diverged.reason}")
                state.summary["diverged_model"] = name
            counts = trained.interventions.take_counts()
            rows.append((f"{name}_train", {"loss": train["loss"], "acc": train["acc"], **counts}))
            rows.append((f"{name}_test", {"loss": test["loss"], "acc": test["acc"]}))
            state.summary[f"{name}_test_acc"] = test["acc"]
            state.summary[f"{name}_train_loss"] = train["loss"]
        if divergence is None and (since % probe_every == 0 or phase_end):
            rows += [(split, probe()) for split, probe in probes.items()]
            if cfg.part == "base" and step > expand_step:  # for the clone runs' checks
                _save(schema.base_state_path(sink.run_dir, step), {"base": base.state_dict()})
            if state.clone is not None and step > expand_step:
                checks = clone_checks(base_at(step), state.clone.model, *probe_data["train"])
                rows.append(("clone_train", checks))
                state.summary["manifold_distance"] = checks["manifold_distance"]
                state.summary["r2_mean"] = checks["r2_mean"]
        if divergence is None and step == expand_step:
            rows += expansion()
        if lifecycle.end_interval(sink, step, rows, divergence, state, checkpoints, step == total):
            bar.close()
            return state.summary
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.3f}" for k, v in state.summary.items() if "_" in k})
    bar.close()
    summary = {**state.summary, "steps": state.step}
    sink.finish("completed", summary=summary, keep_final_checkpoint=cfg.keep_final_checkpoint)
    return summary


if __name__ == "__main__":
    cli.main("cloning", Config, run)
