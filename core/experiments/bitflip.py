"""Bit flipping (slowly-changing regression; paper §4 and §B.1.1, Figs. B.1-B.2; Dohare et al.
2024's slowly-changing regression).

A d -> width -> 1 learner (d = 21 with the constant bias bit, 20 with `bias_input=false`;
`width=0` is the linear baseline) is trained online (batch 1, squared error measured before each
update) on the bit-flip stream (`core.data.bitflip`). Each member's `method` picks its optimizer
and CBP: sgd, adam, noisy_sgd, cbp (SGD + CBP), adam_cbp (Adam + CBP) or sgd_then_cbp (SGD for
the first `switch_step` steps, CBP after: the paper's Fig. B.1); `optimizer.*` (weight decay =
L2, Adam's betas/eps/adam_step, noisy SGD's sigma0/decay), `cbp.*` and `shrink_perturb.*` are
shared by the members, with the same meaning as in the image experiments. One trial runs every
(method, lr, seed) as one batched ensemble (`core.experiments.bitflip_engines`).

    python -m core.experiments.bitflip steps=200000 method=sgd_then_cbp
    python -m core.experiments.bitflip method=sgd,cbp lr=0.01,0.001 seed=0,1,2,3 width=10
    python -m core.experiments.bitflip --help                 # every key, its default and doc

docs/bitflip.md maps each of Dohare et al.'s configs to its command. Cost (2-core CPU, one
thread, 210-member ensemble with `engine=native`, the compiled loop of
`core.experiments.bitflip_native`; benchmarks/bench_bitflip.py --costs): a 5M-step member costs
about 2 s (width 5) to 5 s (width 100) including a probe every 50,000 steps; the probe costs
~1-4 ms per member and measurement; one plain eager run takes 20-35 minutes. Expected result
(defaults, 5 seeds, 200k steps): SGD's mean online error over the first 50k steps ~0.4
(docs/bitflip.md), then (paper Fig. B.1) the binned loss rises again as plasticity is lost; after
the switch CBP brings it back down. `steps=20000 bin_size=1000` is the
tiny smoke budget.

Record: the trial's record (the sink) holds the trial config, status, checkpoints and, per bin, the
`ensemble/loss_mean|min|max` and `ensemble/diverged` of the members, and at each measurement
(split `probe`) the members' mean of every probe metric, `ensemble/<metric>_mean`; every member
has its own complete record under `<run_dir>/members/<method>-lr<lr>-seed<seed>/` (its config
with scalar method/lr/seed, its metrics, its status), so analysis groups members like any other
runs. Logged per member every `bin_size` steps: `loss` (the mean prequential squared error of
the bin) and, for CBP members, `hidden/cbp_replaced` (units replaced in the bin); every
`metrics_every` steps, split `probe`: the `core.metrics` probe (preset `probe.preset`) on the
member's fixed held-out probe set: `loss` (squared error against the target there) and
`hidden/<metric>` on the post-activations (`probe.diagnose=true`, off by default, adds the
hidden layer's clone partition and frozen units: `hidden/cloned_fraction` etc., docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.data.bitflip import FLIPS, THRESHOLDS, BitFlipProblem, BitFlipStream
from core.experiments import bitflip_native
from core.experiments.bitflip_engines import (
    ENGINE_ACTIVATIONS,
    METHODS,
    NATIVE_METHODS,
    BitFlipEnsemble,
    EagerBitFlip,
    LearnerSettings,
    Member,
    member_stream,
)
from core.metrics import Probe, ProbeSpec
from core.run import schema
from core.run.lifecycle import DIVERGENCE_CEILING, run_recorded
from core.run.record import RunRecord, load_metrics
from core.run.seeds import seed_for
from core.run.specs import CBPSpec, OptimizerSpec, ReDoSpec, ShrinkPerturbSpec

ENGINES = ("batched", "native", "eager")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
EXPERIMENT = "bitflip"


def _optimizer_defaults() -> OptimizerSpec:
    """Bit flip's optimizer hyper-parameters: no momentum, constant noisy-SGD noise."""
    return OptimizerSpec(momentum=0.0, decay=1.0)


@dataclass(frozen=True)
class Config:
    """One trial: every (method, lr, seed) of the product below, as one ensemble."""

    steps: int = 5_000_000  # examples per member (the paper's grid: 5M)
    # the problem (paper §B.1.1)
    num_bits: int = 20  # m input bits (plus a constant bias bit unless bias_input=false)
    num_slow: int = 15  # f slow bits
    flip_period: int = 10_000  # T: the slow bits change every T steps
    target_hidden: int = 100  # LTUs of the target network
    beta: float = 0.7  # LTU threshold parameter
    threshold: str = "code"  # code (paper's script) | latex (paper's formula) | dohare (his code)
    flip: str = "one"  # one: flip one slow bit (paper) | redraw: all slow bits (Dohare's data)
    bias_input: bool = True  # give the learner the constant bias bit (false: 20 inputs, Dohare)
    # the learner
    width: int = 5  # hidden units (the paper's grid: 5, 10, 50, 100); 0: the linear learner
    activation: str = "relu"  # hidden activation (ENGINE_ACTIVATIONS; swish = SiLU)
    # the members: the product method x lr x seed
    method: tuple[str, ...] = ("sgd",)  # sgd | adam | noisy_sgd | cbp | adam_cbp | sgd_then_cbp
    lr: tuple[float, ...] = (0.01,)  # step sizes
    seed: tuple[int, ...] = (42,)  # member seeds (data, probe, init, noise, CBP, S&P streams)
    # the shared specs (same keys as the image experiments); the member's method picks the
    # optimizer and whether CBP runs, so optimizer.name/lr and cbp.enabled are not set here
    optimizer: OptimizerSpec = field(default_factory=_optimizer_defaults)  # hyper-parameters
    cbp: CBPSpec = field(default_factory=CBPSpec)  # CBP of the cbp/adam_cbp/sgd_then_cbp members
    redo: ReDoSpec = field(default_factory=ReDoSpec)  # not available in bit flip (batch 1)
    shrink_perturb: ShrinkPerturbSpec = field(default_factory=ShrinkPerturbSpec)  # every member
    switch_step: int | None = None  # sgd_then_cbp: CBP from this step (None: steps // 2)
    # measurement and running
    bin_size: int = 1000  # steps per loss bin (also the chunk of pre-generated data)
    metrics_every: int = 10_000  # steps between probe metrics (a multiple of bin_size)
    probe_size: int = 128  # held-out probe inputs per member (their own stream)
    probe: ProbeSpec = field(default_factory=ProbeSpec)  # core.metrics preset (probe.preset=..)
    checkpoint_every: int = 100_000  # steps between checkpoints (a multiple of bin_size)
    divergence_ceiling: float | None = DIVERGENCE_CEILING  # diverged: loss > this x bin 1's, or NaN
    engine: str = "batched"  # batched (the ensemble) | native (its compiled loop) | eager (1 run)
    dtype: str = "float32"  # float32 | float64

    def __post_init__(self) -> None:
        choices = {
            "threshold": THRESHOLDS,
            "flip": FLIPS,
            "activation": tuple(ENGINE_ACTIVATIONS),
            "engine": ENGINES,
            "dtype": tuple(DTYPES),
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r}; valid: {', '.join(valid)}")
        for method in self.method:
            if method not in METHODS:
                raise ValueError(f"method={method!r}; valid: {', '.join(METHODS)}")
        if not (self.method and self.lr and self.seed):
            raise ValueError("method, lr and seed each need at least one value")
        if self.steps < 1 or self.bin_size < 1 or self.width < 0:
            raise ValueError("steps and bin_size must be >= 1 and width >= 0")
        for key in ("metrics_every", "checkpoint_every"):
            if getattr(self, key) % self.bin_size:
                raise ValueError(f"{key}={getattr(self, key)} is not a multiple of bin_size")
        default = _optimizer_defaults()
        if self.optimizer.name != default.name:
            raise ValueError(
                f"optimizer.name={self.optimizer.name!r}: in bit flip each member's method picks "
                f"its optimizer; set method= one of {', '.join(METHODS)}"
            )
        if self.optimizer.lr != default.lr:
            raise ValueError("optimizer.lr: in bit flip the step size is the member axis lr=")
        if self.optimizer.momentum:
            raise ValueError("optimizer.momentum: bit flip runs without momentum; valid: 0")
        if self.cbp.enabled:
            raise ValueError(
                "cbp.enabled: in bit flip CBP runs for the members with method=cbp, adam_cbp or "
                "sgd_then_cbp; leave cbp.enabled=false"
            )
        if self.redo.enabled:
            raise ValueError("redo.enabled: ReDo is not available in bit flip; valid: false")
        cbp_methods = [m for m in self.method if METHODS[m][1] is not None]
        if cbp_methods and self.width == 0:
            raise ValueError(
                f"method={cbp_methods[0]} needs hidden units, but width=0 is the linear learner "
                "(no layer can host CBP; width >= 1 has the layer `hidden`)"
            )
        if self.engine == "eager" and len(self.members()) != 1:
            raise ValueError("engine=eager runs one member: give one method, one lr, one seed")
        if self.engine == "native":
            self._check_native()
        self.problem()  # validates the problem's fields

    def _check_native(self) -> None:
        """engine=native runs relu learners with plain SGD and CBP, compiled by the C compiler
        (`bitflip_native`)."""
        unsupported = [m for m in self.method if m not in NATIVE_METHODS]
        if unsupported:
            raise ValueError(
                f"engine=native: method={unsupported[0]}; valid: {', '.join(NATIVE_METHODS)} "
                "(engine=batched runs every method)"
            )
        if self.width == 0 or self.activation != "relu":
            raise ValueError(
                f"engine=native runs width >= 1 with activation=relu; got width={self.width}, "
                f"activation={self.activation} (engine=batched runs every learner)"
            )
        if self.optimizer.weight_decay or self.shrink_perturb.enabled:
            raise ValueError(
                "engine=native runs plain SGD: optimizer.weight_decay=0 and shrink_perturb "
                "disabled (engine=batched runs both)"
            )
        bitflip_native.check_compiler()

    def problem(self) -> BitFlipProblem:
        return BitFlipProblem(
            num_bits=self.num_bits,
            num_slow=self.num_slow,
            flip_period=self.flip_period,
            target_hidden=self.target_hidden,
            beta=self.beta,
            threshold=self.threshold,
            flip=self.flip,
            bias_input=self.bias_input,
        )

    def members(self) -> list[Member]:
        """The trial's members, in the order method, lr, seed (seed fastest)."""
        return [Member(m, lr, s) for m, lr, s in itertools.product(self.method, self.lr, self.seed)]

    def settings(self) -> LearnerSettings:
        return LearnerSettings(
            width=self.width,
            activation=self.activation,
            input_dim=self.problem().input_dim,
            optimizer=self.optimizer,
            cbp=self.cbp,
            shrink_perturb=self.shrink_perturb,
            switch_step=self.steps // 2 if self.switch_step is None else self.switch_step,
            dtype=DTYPES[self.dtype],
        )

    def member_config(self, member: Member) -> dict[str, Any]:
        """The config of one member's record: this config with scalar method, lr and seed."""
        config = dataclasses.asdict(self)
        config.update(method=member.method, lr=member.lr, seed=member.seed)
        config["switch_step"] = self.settings().switch_step
        return config


def build(cfg: Config) -> tuple[BitFlipStream, BitFlipEnsemble | EagerBitFlip]:
    """The trial's stream (each member's target and stream from its `data` seed, its probe set
    from its `probe` seed) and learner."""
    members = cfg.members()
    stream = BitFlipStream(
        cfg.problem(),
        [seed_for(m.seed, "data") for m in members],
        [seed_for(m.seed, "probe") for m in members],
        probe_size=cfg.probe_size,
        dtype=DTYPES[cfg.dtype],
    )
    if cfg.engine == "eager":
        return stream, EagerBitFlip(cfg.settings(), members[0])
    return stream, BitFlipEnsemble(cfg.settings(), members, native=cfg.engine == "native")


def train(
    learner: BitFlipEnsemble | EagerBitFlip,
    stream: BitFlipStream,
    start: int,
    stop: int,
    chunk: int,
) -> torch.Tensor:
    """Steps start .. stop - 1 in chunks; returns the prequential losses (stop - start, M)."""
    out = []
    for t in range(start, stop, chunk):
        n = min(chunk, stop - t)
        x, y = stream.next_chunk(n)
        losses = torch.empty(n, stream.members, dtype=stream.dtype)
        learner.begin_chunk(t, n)
        learner.train_chunk(t, x, y, losses)
        out.append(losses)
    return torch.cat(out)


def _probes(
    cfg: Config, learner: BitFlipEnsemble | EagerBitFlip, stream: BitFlipStream
) -> list[Callable[[], dict[str, float]]]:
    """One measurement per member on its held-out probe set, of `learner.model_for_probe()`
    (which `load_member(k)` fills): a `core.metrics.Probe` with the squared error against the
    target as the loss; for the linear learner (no hidden layer to measure) that loss alone."""
    targets = stream.target(stream.probe_inputs)  # (M, probe_size)
    model = learner.model_for_probe()

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out[:, 0], y)

    if cfg.width == 0:

        def probe_loss(k: int) -> Callable[[], dict[str, float]]:
            @torch.no_grad()
            def measure() -> dict[str, float]:
                return {"loss": float(loss(model(stream.probe_inputs[k]), targets[k]))}

            return measure

        return [probe_loss(k) for k in range(len(learner.members))]
    return [
        Probe(
            model,
            stream.probe_inputs[k],
            targets[k],
            loss,
            cfg.probe,
            generator=member_stream(member.seed, "probe_sample"),
        )
        for k, member in enumerate(learner.members)
    ]


def _measure(
    learner: BitFlipEnsemble | EagerBitFlip,
    probes: list[Callable[[], dict[str, float]]],
    alive: list[bool],
) -> list[dict]:
    """Per member: the probe's metrics ("loss" on the probe set, "hidden/<metric>"); nothing
    for a member that diverged."""
    rows = []
    for k, probe in enumerate(probes):
        if not alive[k]:
            rows.append({})
            continue
        learner.load_member(k)
        rows.append(probe())
    return rows


def _ensemble_summary(bin_loss: list[float]) -> dict[str, float]:
    """The trial-level rows (layer "ensemble"): the bin loss over the members still finite."""
    finite = [v for v in bin_loss if math.isfinite(v)]
    return {
        "ensemble/loss_mean": sum(finite) / len(finite) if finite else math.nan,
        "ensemble/loss_min": min(finite, default=math.nan),
        "ensemble/loss_max": max(finite, default=math.nan),
        "ensemble/diverged": float(len(bin_loss) - len(finite)),
    }


def _ensemble_probe_summary(metrics: list[dict]) -> dict[str, float]:
    """The trial-level probe rows: each probe metric's mean over the members measured."""
    measured = [m for m in metrics if m]
    return {
        f"ensemble/{key}_mean": sum(m[key] for m in measured) / len(measured)
        for key in (measured[0] if measured else {})
    }


def _logged_steps(record: RunRecord) -> int:
    """The last step a member record already holds rows for (-1: none)."""
    frame = load_metrics(record.run_dir)
    return int(frame["step"].max()) if len(frame) else -1


def _divergence(loss: float, first: float, ceiling: float | None) -> str:
    """Why a bin loss counts as divergence ("" if it does not)."""
    if not math.isfinite(loss):
        return "non-finite loss"
    if ceiling is not None and math.isfinite(first) and loss > ceiling * first:
        return f"loss {loss:.3g} above {ceiling:g} x the first bin's {first:.3g}"
    return ""


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict[str, Any]:
    """Train every member of `cfg`; write the member records; resume from the sink's checkpoint.

    Resume: the trial checkpoint (the sink's) holds the stacked state of every member (weights,
    optimizer and CBP state, every RNG stream, the stream position, the divergence state).
    Member rows are flushed just before each trial checkpoint, so a member may hold rows past
    the checkpoint it resumes from; those steps are recomputed (deterministically, to the same
    values) and not logged again. A trial whose record is already `completed` or `diverged` is
    not run again: its summary is returned. An exception marks the trial `failed` (with the
    error) and propagates.
    """
    return run_recorded(_run, cfg, sink, progress)


def _run(cfg: Config, sink: RunRecord, progress: bool) -> dict[str, Any]:
    members = cfg.members()
    sink.write_config(cfg, EXPERIMENT)
    records = [
        RunRecord(
            schema.members_dir(sink.run_dir) / m.name,
            run_id=f"{sink.run_id}/{m.name}",
            flush_rows=2**62,
        )
        for m in members
    ]
    for record, member in zip(records, members):
        record.write_config(cfg.member_config(member), EXPERIMENT)
    stream, learner = build(cfg)
    probes = _probes(cfg, learner, stream)
    start = 0
    first = [math.nan] * len(members)  # each member's first bin loss (the divergence scale)
    reason = [""] * len(members)  # why a member diverged, with the step
    saved = sink.load_checkpoint()
    if saved is not None:
        start, state = saved
        learner.load_state_dict(state["learner"])
        stream.load_state_dict(state["stream"])
        first, reason = list(state["first"]), list(state["reason"])
    logged = [_logged_steps(r) for r in records]
    sink.set_status("running")
    for record in records:
        record.set_status("running")

    cbp_members = [METHODS[m.method][1] is not None for m in members]
    replaced = learner.replacements().tolist()
    last_loss = [math.nan] * len(members)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step", unit_scale=True)
    began = time.perf_counter()
    for t in range(start, cfg.steps, cfg.bin_size):
        stop = min(t + cfg.bin_size, cfg.steps)
        bin_loss = train(learner, stream, t, stop, cfg.bin_size).mean(0).tolist()
        now = learner.replacements().tolist()
        for k, loss in enumerate(bin_loss):
            last_loss[k] = loss
            if t == 0:
                first[k] = loss
            if not reason[k]:
                why = _divergence(loss, first[k], cfg.divergence_ceiling)
                reason[k] = f"{why} at step {stop}" if why else ""
        alive = [not r for r in reason]
        metrics = _measure(learner, probes, alive) if stop % cfg.metrics_every == 0 else None
        for k, record in enumerate(records):
            if stop > logged[k]:
                row = {"loss": bin_loss[k]}
                if cbp_members[k]:
                    row["hidden/cbp_replaced"] = float(now[k] - replaced[k])
                record.log(stop, row)
                if metrics:
                    record.log(stop, metrics[k], split="probe")
        replaced = now
        sink.log(stop, _ensemble_summary(bin_loss))
        if metrics:
            sink.log(stop, _ensemble_probe_summary(metrics), split="probe")
        if stop % cfg.checkpoint_every == 0 or stop == cfg.steps:
            for record in records:
                record.flush()
            sink.save_checkpoint(
                stop,
                {
                    "learner": learner.state_dict(),
                    "stream": stream.state_dict(),
                    "first": first,
                    "reason": reason,
                },
            )
        bar.update(stop - t)
        if all(reason):
            break
    bar.close()
    elapsed = time.perf_counter() - began
    for record, why in zip(records, reason):
        record.finish("diverged" if why else "completed", why)
    diverged = [m.name for m, why in zip(members, reason) if why]
    done = cfg.steps - start
    summary = {
        "members": len(members),
        "steps": cfg.steps,
        "member_examples_per_s": done * len(members) / elapsed if elapsed > 0 else math.nan,
        "final_loss": {m.name: loss for m, loss in zip(members, last_loss)},
        "member_dirs": [str(r.run_dir) for r in records],
    }
    sink.finish("diverged" if diverged else "completed", ", ".join(diverged), summary=summary)
    return summary


if __name__ == "__main__":
    from core.run.cli import main

    main(EXPERIMENT, Config, run)
