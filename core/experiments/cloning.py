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
"noise", "cbp", "redo", "shrink_perturb" (index 1 for the clone's), "dropout" (torch's global
RNG) and "probe" (the probe batches, never shared with the training streams).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from core.cloning import cloning_score, compare, expand, manifold_distance, param_groups
from core.data import BatchOrder, load_images, stratified_indices
from core.experiments.classification import classification_probe, evaluate, masked_loss
from core.experiments.image_config import ImageConfig
from core.models import ModelConfig, build_model
from core.run import build, cli, lifecycle
from core.run.record import RunRecord
from core.run.seeds import seed_for
from core.run.specs import OptimizerSpec

MODELS = ("base", "clone")  # index i: the model's streams are seed_for(seed, purpose, i)


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

    positive_fields: ClassVar[tuple[str, ...]] = (*ImageConfig.positive_fields, "clone_epochs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 2 or self.base_epochs < 0:
            raise ValueError("factor must be >= 2 and base_epochs >= 0")


@dataclass
class Learner:
    """One trained model with its optimizer, interventions and running loss/accuracy."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    interventions: build.Interventions
    stats: lifecycle.RunningStats

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "interventions": self.interventions.state_dict(),
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.interventions.load_state_dict(state["interventions"])
        self.stats.load_state_dict(state["stats"])


def learner(cfg: Config, model: nn.Module, name: str, streams: dict) -> Learner:
    """The Learner of `model` (the base or the clone) with its optimizer and interventions."""
    device = next(model.parameters()).device
    index = MODELS.index(name)
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
    base: Learner
    clone: Learner | None  # None before the expansion
    streams: dict[str, torch.Generator]  # order, augment, base_noise, clone_noise
    order: BatchOrder
    summary: dict[str, Any]

    def learners(self) -> dict[str, Learner]:
        return (
            {"base": self.base} if self.clone is None else {"base": self.base, "clone": self.clone}
        )

    def state_dict(self) -> dict[str, Any]:
        current = (self.clone or self.base).model
        return {
            "step": self.step,
            "model_config": current.cfg.to_dict(),
            "model": current.state_dict(),
            "base_config": self.base.model.cfg.to_dict(),
            "base": self.base.model.state_dict(),
            "learners": {name: x.state_dict() for name, x in self.learners().items()},
            "random": lifecycle.random_state(self.streams),
            "order": self.order.state_dict(),
            "summary": self.summary,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cfg, self.step = self.cfg, state["step"]
        self.base.model.load_state_dict(state["base"])
        if "clone" in state["learners"]:
            clone_cfg = ModelConfig(**state["model_config"])
            clone = build_model(clone_cfg, seed=seed_for(cfg.seed, "init", 1))
            clone.load_state_dict(state["model"])
            device = next(self.base.model.parameters()).device
            self.clone = learner(cfg, clone.to(device).train(), "clone", self.streams)
        for name, x in self.learners().items():
            x.load_state_dict(state["learners"][name])
        lifecycle.set_random_state(self.streams, state["random"])
        self.order.load_state_dict(state["order"])
        self.summary = state["summary"]


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict:
    """Run (or resume, from `sink`'s last checkpoint) the cloning experiment."""
    return lifecycle.run_recorded(_train, cfg, sink, progress)


def _train(cfg: Config, sink: RunRecord, progress: bool) -> dict:
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
    lifecycle.seed_dropout(cfg.seed)
    order = BatchOrder(
        torch.arange(len(data.train_y), device=device), cfg.batch_size, streams["order"]
    )
    state = CloningState(cfg, 0, learner(cfg, base, "base", streams), None, streams, order, {})

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

    def expansion() -> list[tuple[str, dict[str, float]]]:
        """Create the clone; the rows logged at the expansion."""
        state.clone = learner(cfg, clone_of(base, cfg).train(), "clone", streams)
        probes.update(probes_of("clone", state.clone.model))
        checks = clone_checks(base, state.clone.model, *probe_data["train"])
        rows = [(split, probes[split]()) for split in ("clone_train", "clone_test")]
        return [*rows, ("clone_train", checks)]

    probes = probes_of("base", base)
    saved = sink.load_checkpoint()
    if saved is None:
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
            loss, correct, _ = masked_loss(trained.model(x), y, None, None)
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
            if state.clone is not None and step > expand_step:
                checks = clone_checks(base, state.clone.model, *probe_data["train"])
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
