"""Bit flipping (slowly-changing regression; paper §4 and §B.1.1, Figs. B.1-B.2).

A 21 -> width -> 1 learner is trained online (batch 1, squared error measured before each update)
on the bit-flip stream (`core.data.bitflip`) with SGD, Adam, noisy SGD, CBP, or SGD for the first
`switch_step` steps and CBP after (`sgd_then_cbp`, the paper's Fig. B.1). One trial runs every
(method, lr, seed) of its config as one batched ensemble (`core.experiments.bitflip_ensemble`).

    python -m core.experiments.bitflip steps=200000 method=sgd_then_cbp
    python -m core.experiments.bitflip method=sgd,cbp lr=0.01,0.001 seed=0,1,2,3 width=10

Cost (2-core CPU, 256-member ensemble, benchmarks/bench_bitflip.py): a 5M-step member costs about
1.4 s with SGD and 3.3 s with CBP, plus the probe (~1 ms per member and measurement); one plain
eager run takes 20-35 minutes. Expected result
(paper Fig. B.1): with SGD the binned loss falls, then rises again as plasticity is lost; after
the switch CBP brings it back down. `steps=20000 bin_size=1000` is the tiny smoke budget.

Record: the trial's record (the sink) holds the trial config, status, checkpoints and, per bin, the
`ensemble/loss_mean|min|max` and `ensemble/diverged` of the members, and at each measurement
(split `probe`) the members' mean of every probe metric, `ensemble/<metric>_mean` (what a Tune
sink reports, so the dashboard and MLflow show the ensemble's loss and rank curves);
every member has its own complete record under `<run_dir>/members/<method>-lr<lr>-seed<seed>/`
(its config with scalar method/lr/seed, its metrics, its status), so analysis groups members like
any other runs.
Logged per member every `bin_size` steps: `loss` (the mean prequential squared error of the bin);
every `metrics_every` steps, with split `probe`: the `core.metrics` probe (preset `probe.preset`)
on the member's fixed held-out probe set: `loss` (squared error against the target there) and
`hidden/<metric>` on the post-activations, plus `hidden/replacements` (CBP units replaced so far).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.data.bitflip import FLIPS, THRESHOLDS, BitFlipProblem, BitFlipStream
from core.experiments.bitflip_ensemble import (
    ACTIVATIONS,
    METHODS,
    BitFlipEnsemble,
    EagerBitFlip,
    LearnerSettings,
    Member,
    member_seed,
)
from core.experiments.training import run_recorded
from core.metrics import Probe, ProbeSpec
from core.optim import ROUNDINGS, UTIL_TYPES
from core.records import RunRecord, load_metrics

ENGINES = ("batched", "eager")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Config:
    """One trial: every (method, lr, seed) of the product below, as one ensemble."""

    steps: int = 5_000_000  # examples per member (the paper's grid: 5M)
    # the problem (paper_spec §7.3)
    num_bits: int = 20  # m input bits (plus a constant bias bit)
    num_slow: int = 15  # f slow bits
    flip_period: int = 10_000  # T: one slow bit flips every T steps
    target_hidden: int = 100  # LTUs of the target network
    beta: float = 0.7  # LTU threshold parameter
    threshold: str = "paper"  # paper: m*beta - S_i; code: the paper script's (m+1)*beta variant
    flip: str = "one"  # one: flip one slow bit (paper); redraw: all slow bits (Dohare's code)
    # the learner
    width: int = 5  # hidden units (the paper's grid: 5, 10, 50, 100)
    activation: str = "relu"  # hidden activation
    # the members: the product method x lr x seed
    method: tuple[str, ...] = ("sgd",)  # sgd | adam | noisy_sgd | cbp | sgd_then_cbp
    lr: tuple[float, ...] = (0.01,)  # step sizes
    seed: tuple[int, ...] = (42,)  # member seeds (data, init, noise and CBP streams)
    # noisy SGD (core.optim.NoisySGD)
    noise_sigma0: float = 0.01  # sigma_0
    noise_decay: float = 1.0  # lambda (1: constant noise, fit for a never-ending problem)
    # CBP (core.optim.CBPState); the base optimizer is SGD
    cbp_rate: float = 1e-4  # replacement rate rho
    cbp_decay: float = 0.99  # utility decay eta
    cbp_maturity: int = 100  # maturity threshold M
    cbp_util: str = "contribution"  # utility type (UTIL_TYPES)
    cbp_rounding: str = "carry"  # carry (fractions carried) | bernoulli (Dohare's default)
    cbp_bias_correction: bool = True  # fold the replaced unit's mean into the output bias
    switch_step: int | None = None  # sgd_then_cbp: CBP from this step (None: steps // 2)
    # measurement and running
    bin_size: int = 1000  # steps per loss bin (also the chunk of pre-generated data)
    metrics_every: int = 10_000  # steps between probe metrics (a multiple of bin_size)
    probe_size: int = 128  # held-out probe inputs per member
    probe: ProbeSpec = field(default_factory=ProbeSpec)  # core.metrics preset (probe.preset=..)
    checkpoint_every: int = 100_000  # steps between checkpoints (a multiple of bin_size)
    engine: str = "batched"  # batched (the ensemble) | eager (one member, nn.Module + autograd)
    dtype: str = "float32"  # float32 | float64

    def __post_init__(self) -> None:
        choices = {
            "threshold": THRESHOLDS,
            "flip": FLIPS,
            "activation": tuple(ACTIVATIONS),
            "cbp_util": UTIL_TYPES,
            "cbp_rounding": ROUNDINGS,
            "engine": ENGINES,
            "dtype": tuple(DTYPES),
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r}; valid: {', '.join(valid)}")
        for method in self.method:
            if method not in METHODS:
                raise ValueError(f"method {method!r}; valid: {', '.join(METHODS)}")
        if not (self.method and self.lr and self.seed):
            raise ValueError("method, lr and seed each need at least one value")
        if self.steps < 1 or self.bin_size < 1 or self.width < 1:
            raise ValueError("steps, bin_size and width must be >= 1")
        for key in ("metrics_every", "checkpoint_every"):
            if getattr(self, key) % self.bin_size:
                raise ValueError(f"{key}={getattr(self, key)} is not a multiple of bin_size")
        if self.engine == "eager" and len(self.members()) != 1:
            raise ValueError("engine=eager runs one member: give one method, one lr, one seed")
        self.problem()  # validates the problem's fields

    def problem(self) -> BitFlipProblem:
        return BitFlipProblem(
            num_bits=self.num_bits,
            num_slow=self.num_slow,
            flip_period=self.flip_period,
            target_hidden=self.target_hidden,
            beta=self.beta,
            threshold=self.threshold,
            flip=self.flip,
        )

    def members(self) -> list[Member]:
        """The trial's members, in the order method, lr, seed (seed fastest)."""
        return [Member(m, lr, s) for m, lr, s in itertools.product(self.method, self.lr, self.seed)]

    def settings(self) -> LearnerSettings:
        return LearnerSettings(
            width=self.width,
            activation=self.activation,
            input_dim=self.num_bits + 1,
            noise_sigma0=self.noise_sigma0,
            noise_decay=self.noise_decay,
            cbp_rate=self.cbp_rate,
            cbp_decay=self.cbp_decay,
            cbp_maturity=self.cbp_maturity,
            cbp_util=self.cbp_util,
            cbp_rounding=self.cbp_rounding,
            cbp_bias_correction=self.cbp_bias_correction,
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
    """The trial's stream (one per member, from the member's data seed) and learner."""
    members = cfg.members()
    dtype = DTYPES[cfg.dtype]
    seeds = [member_seed(m.seed, "data") for m in members]
    stream = BitFlipStream(cfg.problem(), seeds, probe_size=cfg.probe_size, dtype=dtype)
    if cfg.engine == "eager":
        return stream, EagerBitFlip(cfg.settings(), members[0])
    return stream, BitFlipEnsemble(cfg.settings(), members)


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
) -> list[Probe]:
    """One `core.metrics.Probe` per member on its held-out probe set, with the squared error
    against the target as the loss; it measures `learner.member_model(k)`."""
    targets = stream.target(stream.probe_inputs)  # (M, probe_size)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out[:, 0], y)

    return [
        Probe(
            learner.model_for_probe(),
            stream.probe_inputs[k],
            targets[k],
            loss,
            cfg.probe,
            generator=torch.Generator().manual_seed(member_seed(member.seed, "probe")),
        )
        for k, member in enumerate(learner.members)
    ]


def _measure(
    learner: BitFlipEnsemble | EagerBitFlip, probes: list[Probe], finite: list[bool]
) -> list[dict]:
    """Per member: the probe's metrics ("loss" on the probe set, "hidden/<metric>") and the
    number of units CBP replaced so far; nothing for a member whose loss went non-finite."""
    replaced = learner.replacements()
    rows = []
    for k, probe in enumerate(probes):
        if not finite[k]:
            rows.append({})
            continue
        learner.load_member(k)
        rows.append({**probe(), "hidden/replacements": float(replaced[k])})
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


def run(cfg: Config, sink: RunRecord, progress: bool = False) -> dict[str, Any]:
    """Train every member of `cfg`; write the member records; resume from the sink's checkpoint.

    Resume: the trial checkpoint (the sink's) holds the stacked state of every member (weights,
    optimizer and CBP state, every RNG stream, the stream position). Member rows are flushed just
    before each trial checkpoint, so a member may hold rows past the checkpoint it resumes from;
    those steps are recomputed (deterministically, to the same values) and not logged again.
    A trial whose record is already `completed` or `diverged` is not run again: its summary is
    returned. An exception marks the trial `failed` (with the error) and propagates.
    """
    return run_recorded(_run, cfg, sink, progress)


def _run(cfg: Config, sink: RunRecord, progress: bool) -> dict[str, Any]:
    members = cfg.members()
    sink.write_config(cfg)
    records = [
        RunRecord(
            sink.run_dir / "members" / m.name, run_id=f"{sink.run_id}/{m.name}", flush_rows=2**62
        )
        for m in members
    ]
    for record, member in zip(records, members):
        record.write_config(cfg.member_config(member))
    stream, learner = build(cfg)
    probes = _probes(cfg, learner, stream)
    start = 0
    saved = sink.load_checkpoint()
    if saved is not None:
        start, state = saved
        learner.load_state_dict(state["learner"])
        stream.load_state_dict(state["stream"])
    logged = [_logged_steps(r) for r in records]
    sink.set_status("running")
    for record in records:
        record.set_status("running")

    finite = [True] * len(members)
    last_loss = [math.nan] * len(members)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step", unit_scale=True)
    began = time.perf_counter()
    for t in range(start, cfg.steps, cfg.bin_size):
        stop = min(t + cfg.bin_size, cfg.steps)
        bin_loss = train(learner, stream, t, stop, cfg.bin_size).mean(0).tolist()
        for k, loss in enumerate(bin_loss):
            last_loss[k] = loss
            finite[k] = finite[k] and math.isfinite(loss)
        metrics = _measure(learner, probes, finite) if stop % cfg.metrics_every == 0 else None
        for k, record in enumerate(records):
            if stop > logged[k]:
                record.log(stop, {"loss": bin_loss[k]})
                if metrics:
                    record.log(stop, metrics[k], split="probe")
        sink.log(stop, _ensemble_summary(bin_loss))
        if metrics:
            sink.log(stop, _ensemble_probe_summary(metrics), split="probe")
        if stop % cfg.checkpoint_every == 0 or stop == cfg.steps:
            for record in records:
                record.flush()
            sink.save_checkpoint(
                stop, {"learner": learner.state_dict(), "stream": stream.state_dict()}
            )
        bar.update(stop - t)
        if not any(finite):
            break
    bar.close()
    elapsed = time.perf_counter() - began
    for record, ok in zip(records, finite):
        record.set_status("completed" if ok else "diverged", "" if ok else "non-finite loss")
    diverged = [m.name for m, ok in zip(members, finite) if not ok]
    done = cfg.steps - start
    summary = {
        "members": len(members),
        "steps": cfg.steps,
        "member_examples_per_s": done * len(members) / elapsed if elapsed > 0 else math.nan,
        "final_loss": {m.name: loss for m, loss in zip(members, last_loss)},
        "member_dirs": [str(Path(r.run_dir)) for r in records],
    }
    status = "completed" if not diverged else "diverged"
    sink.set_status(status, ", ".join(diverged), summary=summary)
    return summary


if __name__ == "__main__":
    from core.experiments.cli import main

    main("bitflip", Config, run)
