r"""Cloning: a base trained, expanded onto the cloning manifold, then base and clone trained side by
side (paper §2 and §4, paper_spec §7.2).

Phase 1 trains the base for `base_epochs`. At the expansion the clone is `core.cloning.expand(base,
factor)` (rebuilt with `clone_dropout` when given) and gets its own fresh optimizer
(`clone_optimizer`: sgd, adam or noisy_sgd; optionally with the per-tensor LR multipliers under
which SGD on the clone tracks the base). Phase 2 trains both for `clone_epochs` on the same batches
(same images, same augmentation); the base keeps its optimizer state.

Run (paper scale: CIFAR-10 under $LOP_DATA, 20 + 500 epochs, hours on an A100):

    python -m core.experiments.cloning model.arch=mlp clone_optimizer.name=noisy_sgd \
        clone_optimizer.sigma0=0.01 clone_optimizer.decay=0.999 seed=40

Smoke run (seconds on a CPU):

    python -m core.experiments.cloning dataset=synthetic model.arch=mlp model.hidden_sizes=16,16 \
        base_epochs=2 clone_epochs=2 device=cpu

Rows (split, metric), split = "<model>_<data>" with model in {base, clone}, data in {train, test}:
  base_train / clone_train: loss, acc (means over the steps since the last log point)
  base_test / clone_test:   loss, acc on the whole test split, in eval mode
  base_* / clone_*, "<layer>/<metric>": the metrics probe on the train / test probe batch
                                        (and its probe_loss, probe_accuracy)
  clone_train (at the expansion and every probe_every epochs; on the train probe batch):
    manifold_distance, "<layer>/r2_forward", "<layer>/r2_backward", r2_mean (cloning score),
    max_abs_diff_output, max_abs_diff_loss, max_abs_diff_input_grad,
    "<layer>/max_abs_diff_forward", "<layer>/max_abs_diff_backward" (base vs clone)

Checkpoint state: "model_config" and "model" are the clone's (the base's before the expansion),
"base_config" and "base" the base's; plus both optimizers, every RNG state and the batch order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from tqdm import tqdm

from core.cloning import cloning_score, compare, expand, manifold_distance, param_groups
from core.data import BatchOrder, stratified_indices
from core.experiments import cli
from core.experiments.training import (
    OptimizerSpec,
    RunningStats,
    TrainingConfig,
    build_optimizer,
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
from core.models import ModelConfig, build_model
from core.records import RunRecord


@dataclass(frozen=True)
class Config(TrainingConfig):
    """A cloning run; every field is a `key=value` override.

    The shared fields (data, model, batch, probe, checkpoints, seed, device) and their defaults
    (CIFAR-10, SGD 0.01 with momentum 0.9) are those of `TrainingConfig`: `model` is the base's
    architecture, `optimizer` the base's (both phases),
    `probe_every` counts epochs (the clone checks run at the same cadence).
    """

    clone_optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)  # the clone's, fresh
    clone_dropout: float | None = None  # the clone's dropout (None: the base's model.dropout)
    lr_multipliers: bool = False  # clone LR per tensor x core.cloning.lr_multipliers
    factor: int = 2  # width expansion factor
    base_epochs: int = 20  # phase 1: base alone
    clone_epochs: int = 500  # phase 2: base and clone side by side

    positive_fields: ClassVar[tuple[str, ...]] = (*TrainingConfig.positive_fields, "clone_epochs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 2 or self.base_epochs < 0:
            raise ValueError("factor must be >= 2 and base_epochs >= 0")


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict:
    """Run (or resume, from `sink`'s last checkpoint) the cloning experiment."""
    return run_recorded(_run, cfg, sink, progress)


def _clone_of(base: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """`expand(base, factor)`, rebuilt with the clone's dropout (dropout holds no parameters)."""
    clone_cfg = base.cfg.widened(cfg.factor)
    if cfg.clone_dropout is not None:
        clone_cfg = dataclasses.replace(clone_cfg, dropout=cfg.clone_dropout)
    clone = build_model(clone_cfg, seed=cfg.seed).to(next(base.parameters()).device)
    clone.load_state_dict(expand(base, cfg.factor).state_dict())
    return clone


def _clone_checks(base, clone, x, y) -> dict[str, float]:
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


def _run(cfg: Config, sink: RunRecord, progress: bool) -> dict:
    device, data = open_run(cfg, sink)
    base_cfg = model_config(cfg.model, data)
    base = build_model(base_cfg, seed=cfg.seed).to(device)
    names = ("order", "augment", "noise", "clone_noise")
    generators = seeded_generators(cfg.seed, device, names)
    base_opt = build_optimizer(cfg.optimizer, base.parameters(), generators["noise"])
    torch.manual_seed(cfg.seed)  # dropout draws from the global RNG, checkpointed below

    order = BatchOrder(
        torch.arange(len(data.train_y), device=device), cfg.batch_size, generators["order"]
    )
    spe = order.steps_per_epoch
    expand_step = cfg.base_epochs * spe
    total = expand_step + cfg.clone_epochs * spe
    log_every = cfg.log_every or spe
    probe_every = cfg.probe_every * spe
    classes = torch.arange(data.num_classes, device=device)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003)
    probe_data = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        idx = stratified_indices(y, classes, cfg.probe_size, g)
        probe_data[split] = (data.inputs(x[idx]), y[idx])

    clone = clone_opt = None
    probes: dict[str, object] = {}

    def make_probes(name: str, model: torch.nn.Module) -> None:
        for split, (x, y) in probe_data.items():
            probes[f"{name}_{split}"] = make_probe(model, x, y, cfg.probe, cfg.seed)

    def new_clone_optimizer(model):
        params = (
            param_groups(model, cfg.clone_optimizer.lr)
            if cfg.lr_multipliers
            else model.parameters()
        )
        return build_optimizer(cfg.clone_optimizer, params, generators["clone_noise"])

    def begin_clone(step: int) -> None:
        nonlocal clone, clone_opt
        clone = _clone_of(base, cfg).train()
        clone_opt = new_clone_optimizer(clone)
        make_probes("clone", clone)
        for split in ("clone_train", "clone_test"):
            sink.log(step, probes[split](), split=split)
        sink.log(step, _clone_checks(base, clone, *probe_data["train"]), split="clone_train")

    def log_probes(step: int) -> None:
        for split, probe in probes.items():
            sink.log(step, probe(), split=split)

    make_probes("base", base)
    state = sink.load_checkpoint()
    summary: dict = {}
    if state is None:
        step = 0
        log_probes(0)
        if expand_step == 0:
            begin_clone(0)
    else:
        step, saved = state
        base.load_state_dict(saved["base"])
        base_opt.load_state_dict(saved["base_optimizer"])
        if "clone_optimizer" in saved:
            clone = build_model(ModelConfig(**saved["model_config"]), seed=cfg.seed).to(device)
            clone.load_state_dict(saved["model"])
            clone_opt = new_clone_optimizer(clone)
            clone_opt.load_state_dict(saved["clone_optimizer"])
            make_probes("clone", clone)
        set_random_state(generators, saved["random"])
        order.load_state_dict(saved["order"])
        summary = saved["summary"]
    sink.set_status("running")

    models = {"base": (base, base_opt), "clone": (clone, clone_opt)}
    stats = {name: RunningStats(device) for name in models}
    last_checkpoint = step
    bar = tqdm(total=total, initial=step, disable=not progress, desc="cloning")
    base.train()
    while step < total:
        idx = order.next()
        x = data.inputs(data.train_x[idx], generators["augment"], augment=cfg.augment)
        y = data.train_y[idx]
        step += 1
        for name, (model, opt) in models.items():
            if model is None:
                continue
            loss, correct, _ = masked_loss(model(x), y, None, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats[name].add(step, loss, correct, correct, len(idx))

        phase_end = step in (expand_step, total)
        if (step - (expand_step if step > expand_step else 0)) % log_every and not phase_end:
            continue
        results = {}
        for name, (model, _) in models.items():
            if model is None:
                continue
            train, bad_step = stats[name].read()
            stats[name].reset()
            test = evaluate(model, data, data.test_x, data.test_y)
            if bad_step is None and not math.isfinite(test["loss"]):
                bad_step = step  # finite losses, but the last update left non-finite weights
            if bad_step is not None:
                summary = {**summary, "diverged_at": bad_step, "diverged_model": name}
                sink.set_status(
                    "diverged",
                    f"non-finite {name} loss at step {bad_step}",
                    step=bad_step,
                    summary=summary,
                )
                bar.close()
                return summary
            results[name] = (train, test)
        for name, (train, test) in results.items():
            sink.log(step, {"loss": train["loss"], "acc": train["acc"]}, split=f"{name}_train")
            sink.log(step, {"loss": test["loss"], "acc": test["acc"]}, split=f"{name}_test")
            summary[f"{name}_test_acc"] = test["acc"]
            summary[f"{name}_train_loss"] = train["loss"]
        since = step - expand_step if step > expand_step else step
        if since % probe_every == 0 or phase_end:
            log_probes(step)
            if clone is not None and step > expand_step:
                checks = _clone_checks(base, clone, *probe_data["train"])
                sink.log(step, checks, split="clone_train")
                summary["manifold_distance"] = checks["manifold_distance"]
                summary["r2_mean"] = checks["r2_mean"]
        bar.update(step - bar.n)
        bar.set_postfix(
            {
                f"{n}_{k}": f"{summary[f'{n}_{k}']:.3f}"
                for n in models
                for k in ("train_loss", "test_acc")
                if f"{n}_{k}" in summary
            }
        )
        if step == expand_step:
            begin_clone(step)
            models["clone"] = (clone, clone_opt)
        if step - last_checkpoint >= cfg.checkpoint_every or step == total:
            current = clone if clone is not None else base
            saved = {
                "model_config": current.cfg.to_dict(),
                "model": current.state_dict(),
                "base_config": base.cfg.to_dict(),
                "base": base.state_dict(),
                "base_optimizer": base_opt.state_dict(),
                "random": random_state(generators),
                "order": order.state_dict(),
                "summary": summary,
            }
            if clone is not None:
                saved["clone_optimizer"] = clone_opt.state_dict()
            sink.save_checkpoint(step, saved)
            last_checkpoint = step
    bar.close()
    summary = {**summary, "steps": step}
    sink.set_status("completed", summary=summary)
    return summary


if __name__ == "__main__":
    cli.main("cloning", Config, run)
