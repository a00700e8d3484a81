"""The two bit-flip engines: the batched ensemble (many members as stacked weights) and the plain
eager single run it is checked against.

Both have the same interface, driven by `core.experiments.bitflip.train` (the one training loop):
`begin_chunk(start, n)` (pre-draw the chunk's randomness), `train_chunk(start, x, y, losses)` for
steps start .. start + n - 1 (x: (n, M, d), y: (n, M); the prequential squared errors written to
losses (n, M)), `model_for_probe()` and `load_member(k)` (an `nn.Module` holding member k's
weights, for the `core.metrics` probe), `weights()`, `replacements()`, `state_dict()` /
`load_state_dict()`.

`BitFlipEnsemble` runs M members (method x learning rate x seed, one width) of the d -> h -> 1
learner (d -> 1 for the linear baseline, width 0): members are grouped by method, each group
holds (n, ...) stacked weights and does a manual forward/backward with batched matmuls
(`torch.baddbmm`) and in-place updates, with no host synchronisation inside a step. Member k draws
every random number from its own streams (`seed_for(seed, purpose)`, PURPOSES): the data, the
probe set, the initialisation, the noise of noisy SGD, CBP's draws and shrink-and-perturb's
noise; the chunk's noise and CBP draws are pre-drawn per member, in the same order a single run
draws them step by step (see `NoisySGD`, `ContinualBackprop`, `ShrinkPerturb`). So member k's
weights equal those of `EagerBitFlip` (an `nn.Module`, autograd, `torch.optim.SGD` / `Adam`,
`core.optim.ElementwiseAdam`, `NoisySGD`, `ContinualBackprop`, `ShrinkPerturb`) for the same
member, up to float rounding (tested). CBP itself is the one `core.optim.CBPState`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.experiments import bitflip_native
from core.models import ModelConfig, activation_gain, build_model
from core.models.blocks import LEAKY_RELU_SLOPE
from core.optim import (
    CBPState,
    ContinualBackprop,
    ShrinkPerturb,
    elementwise_adam_step,
    noise_size,
    uniform_rows,
)
from core.run.build import build_optimizer
from core.run.seeds import seed_for
from core.run.specs import CBPSpec, OptimizerSpec, ShrinkPerturbSpec

# method -> (base optimizer, CBP from step 0 | from switch_step | never)
METHODS: dict[str, tuple[str, str | None]] = {
    "sgd": ("sgd", None),
    "adam": ("adam", None),
    "noisy_sgd": ("noisy_sgd", None),
    "cbp": ("sgd", "start"),
    "adam_cbp": ("adam", "start"),
    "sgd_then_cbp": ("sgd", "switch"),
}
# the methods `engine=native` runs (plain SGD, with CBP from step 0 or from switch_step)
NATIVE_METHODS = ("sgd", "cbp", "sgd_then_cbp")
# the random streams of a member (core.run.seeds.seed_for purposes)
PURPOSES = ("data", "probe", "probe_sample", "init", "noise", "cbp", "shrink_perturb")
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

_aten = torch.ops.aten

# activation -> (forward(z), backward(grad_a, z, a)): the backward kernels autograd itself uses.
ENGINE_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "relu": (torch.relu, lambda g, z, a: _aten.threshold_backward(g, a, 0)),
    "leaky_relu": (
        lambda z: F.leaky_relu(z, LEAKY_RELU_SLOPE),
        lambda g, z, a: _aten.leaky_relu_backward(g, z, LEAKY_RELU_SLOPE, False),
    ),
    "tanh": (torch.tanh, lambda g, z, a: _aten.tanh_backward(g, a)),
    "sigmoid": (torch.sigmoid, lambda g, z, a: _aten.sigmoid_backward(g, a)),
    "gelu": (F.gelu, lambda g, z, a: _aten.gelu_backward(g, z)),
    "elu": (F.elu, lambda g, z, a: _aten.elu_backward(g, 1.0, 1.0, 1.0, False, z)),
    "selu": (
        torch.selu,
        lambda g, z, a: _aten.elu_backward(g, _SELU_ALPHA, _SELU_SCALE, 1.0, False, z),
    ),
    "swish": (F.silu, lambda g, z, a: _aten.silu_backward(g, z)),
    "identity": (lambda z: z, lambda g, z, a: g),
}


def member_stream(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for member `seed`'s stream `purpose` (one of PURPOSES)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r}; valid: {', '.join(PURPOSES)}")
    return torch.Generator().manual_seed(seed_for(seed, purpose))


@dataclass(frozen=True)
class Member:
    """One run of the ensemble."""

    method: str  # one of METHODS
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-lr{self.lr:g}-seed{self.seed}"

    @property
    def optimizer(self) -> str:
        return METHODS[self.method][0]


@dataclass(frozen=True)
class LearnerSettings:
    """What every member of a trial shares."""

    width: int  # hidden units; 0: the linear learner d -> 1
    activation: str
    input_dim: int
    optimizer: OptimizerSpec  # hyper-parameters of the base optimizers (not name, lr)
    cbp: CBPSpec
    shrink_perturb: ShrinkPerturbSpec
    switch_step: int  # sgd_then_cbp: first step with CBP
    dtype: torch.dtype

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            arch="bitflip",
            in_shape=(self.input_dim,),
            num_classes=1,
            activation=self.activation,
            hidden_sizes=(self.width,) if self.width else (),
        )

    def cbp_start(self, method: str) -> int | None:
        """The first step with CBP for `method`, or None."""
        return {"start": 0, "switch": self.switch_step, None: None}[METHODS[method][1]]

    def cbp_options(self) -> dict[str, Any]:
        """The `cbp.*` settings of `CBPState` (all but `enabled` and `bias_correction`)."""
        skip = ("enabled", "bias_correction")
        return {f.name: getattr(self.cbp, f.name) for f in fields(self.cbp) if f.name not in skip}

    def cbp_state(self, members: int) -> CBPState:
        return CBPState(members, self.width, dtype=self.dtype, **self.cbp_options())


def _cbp_layer_generator(seed: int) -> torch.Generator:
    """The hidden layer's CBP stream, spawned as `ContinualBackprop` spawns it from its root."""
    root = member_stream(seed, "cbp")
    return torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=root)))


class _Group:
    """The members of one method as stacked weights (n, ...), updated in place."""

    def __init__(self, settings: LearnerSettings, method: str, members: list[Member]) -> None:
        s = settings
        self.settings = settings
        self.method = method
        self.optimizer = METHODS[method][0]
        self.n = n = len(members)
        models = [build_model(s.model_config(), seed=seed_for(m.seed, "init")) for m in members]

        def stacked(name: str) -> torch.Tensor:  # weights (n, out, in), biases (n, out, 1)
            t = torch.stack([m.get_parameter(name).detach() for m in models]).to(s.dtype)
            return t if t.dim() == 3 else t[..., None]

        self.hidden = s.width > 0
        layers = ["fc1", "fc2"] if self.hidden else ["fc"]  # fc1: (n, h, d); fc2, fc: (n, 1, .)
        self.names = [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
        self.params = [stacked(name) for name in self.names]
        if self.hidden:
            self.w1, self.b1, self.w2, self.b2 = self.params
            self.act, self.act_grad = ENGINE_ACTIVATIONS[s.activation]
        self.lr = torch.tensor([m.lr for m in members], dtype=torch.float64).view(n, 1, 1)
        self.neg_lr = (-self.lr).to(s.dtype)
        opt = s.optimizer
        self.weight_decay = opt.weight_decay
        # plain SGD: the update fused into the backward pass (-lr folded into the error)
        self.fused_sgd = self.optimizer == "sgd" and not opt.weight_decay
        self.adam_step = 0
        self.element_steps = self.optimizer == "adam" and opt.adam_step == "element"
        if self.optimizer == "adam":
            self.exp_avg = [torch.zeros_like(p) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
            if self.element_steps:
                self.steps = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.noise_generators = [member_stream(m.seed, "noise") for m in members]
        self.noise_step = 0
        self.cbp_start = s.cbp_start(method)
        self.cbp = s.cbp_state(n) if self.cbp_start is not None else None
        self.cbp_generators = [_cbp_layer_generator(m.seed) for m in members]
        sp = s.shrink_perturb
        self.shrink = sp.shrink if sp.enabled else 0.0
        self.perturb = sp.noise_std if sp.enabled else 0.0
        self.sp_generators = [member_stream(m.seed, "shrink_perturb") for m in members]
        self.bound = activation_gain(s.activation) * math.sqrt(3.0 / s.input_dim)
        self._units = torch.arange(s.width)
        self.on_cpu = self.params[0].device.type == "cpu"
        self._chunk_start = 0
        self._noise = None
        self._draws = None
        self._sp_noise = None

    # --- randomness of one chunk, pre-drawn per member ----------------------------------------

    def begin_chunk(self, start: int, n: int) -> None:
        self._chunk_start = start
        s = self.settings
        size = noise_size(sum(p[0].numel() for p in self.params))
        if self.optimizer == "noisy_sgd":
            opt = s.optimizer
            sigmas = opt.sigma0 * opt.decay ** np.arange(self.noise_step, self.noise_step + n)
            self._sigma = sigmas
            noisy = int((sigmas > 0).sum())  # sigma_t is non-increasing: the first `noisy` steps
            self._noise = torch.zeros(n, self.n, size, dtype=s.dtype)  # (n steps, members, size)
            for k, g in enumerate(self.noise_generators):
                self._noise[:noisy, k] = torch.randn(noisy, size, generator=g, dtype=s.dtype)
        if self.perturb:
            self._sp_noise = torch.empty(n, self.n, size, dtype=s.dtype)
            for k, g in enumerate(self.sp_generators):
                self._sp_noise[:, k] = torch.randn(n, size, generator=g, dtype=s.dtype)
        if self.cbp is not None:
            self._draw_cbp(start, n, [self.cbp_start] * self.n)

    def _draw_cbp(self, start: int, n: int, firsts: list[int | None]) -> None:
        """Member k's CBP draws of its steps from `firsts[k]` on (None: no CBP) in this chunk,
        as a single run draws them; the rows of earlier steps are never read."""
        s = self.settings
        per_step = self.cbp.draws_per_step(s.input_dim)
        if self._draws is None or len(self._draws) != n:
            self._draws = torch.zeros(n, self.n, per_step, dtype=s.dtype)
        for k, (g, first) in enumerate(zip(self.cbp_generators, firsts)):
            active = 0 if first is None else max(0, start + n - max(start, first))
            if active:
                self._draws[n - active :, k] = torch.rand(
                    active, per_step, generator=g, dtype=s.dtype
                )

    # --- one step ------------------------------------------------------------------------------

    def train_steps(self, start: int, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        """Steps start .. start + L - 1 on x (L, n, d), y (L, n); losses written to out (L, n)."""
        xs, ys, out3 = x[..., None], y[..., None, None], out[..., None, None]
        for i in range(len(xs)):
            self.step(start + i, xs[i], ys[i], out3[i])

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor, loss_out: torch.Tensor) -> None:
        """x (n, d, 1), y (n, 1, 1), loss_out (n, 1, 1); in-place update of every member."""
        x_t = x.transpose(1, 2)  # (n, 1, d)
        # Outer products as broadcast multiplies: batched matmuls with an inner size of 1 are slow.
        if not self.hidden:
            w, b = self.params
            err = torch.baddbmm(b, w, x) - y  # (n, 1, 1): prediction - target
            torch.mul(err, err, out=loss_out)
            if self.fused_sgd:
                g = err * (2.0 * self.neg_lr)
                w.addcmul_(g, x_t)
                b.add_(g)
            else:
                g = err * 2.0
                self._update([g * x_t, g], t)
        else:
            w1, b1, w2, b2 = self.params
            z = torch.baddbmm(b1, w1, x)  # (n, h, 1)
            a = self.act(z)
            err = torch.baddbmm(b2, w2, a) - y  # (n, 1, 1): prediction - target
            torch.mul(err, err, out=loss_out)
            a_t = a.transpose(1, 2)  # (n, 1, h)
            if self.fused_sgd:
                g = err * (2.0 * self.neg_lr)  # -lr * d loss / d prediction
                grad_z = self.act_grad(w2.transpose(1, 2) * g, z, a)  # -lr * d loss / d z
                w2.addcmul_(g, a_t)
                b2.add_(g)
                w1.addcmul_(grad_z, x_t)
                b1.add_(grad_z)
            else:
                g = err * 2.0  # d loss / d prediction
                grad_z = self.act_grad(w2.transpose(1, 2) * g, z, a)  # (n, h, 1)
                self._update([grad_z * x_t, grad_z, g * a_t, g], t)
            if self.cbp is not None and t >= self.cbp_start:
                self._cbp(t, a_t)
        if self.shrink or self.perturb:
            self._shrink_perturb(t)

    def _update(self, grads: list[torch.Tensor], t: int) -> None:
        if self.optimizer == "adam":
            self._adam(grads)
        elif self.optimizer == "noisy_sgd":
            self._noisy_sgd(t, grads)
        else:
            for p, grad in zip(self.params, grads):
                self._sgd(p, grad)

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """torch.optim.SGD without momentum: coupled L2, then p -= lr d_p."""
        if self.weight_decay:
            grad = grad.add(p, alpha=self.weight_decay)
        p.addcmul_(grad, self.neg_lr)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.Adam's update (single-tensor form) with a per-member learning rate, or
        `ElementwiseAdam`'s (`optimizer.adam_step=element`)."""
        opt = self.settings.optimizer
        beta1, beta2 = opt.betas
        if self.element_steps:
            for p, grad, m, v, steps in zip(
                self.params, grads, self.exp_avg, self.exp_avg_sq, self.steps
            ):
                elementwise_adam_step(
                    p,
                    grad,
                    m,
                    v,
                    steps,
                    lr=self.lr,
                    betas=opt.betas,
                    eps=opt.eps,
                    weight_decay=opt.weight_decay,
                )
            return
        self.adam_step += 1
        neg_step_size = (-self.lr / (1 - beta1**self.adam_step)).to(self.settings.dtype)
        bias_correction2_sqrt = (1 - beta2**self.adam_step) ** 0.5
        for p, grad, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            if opt.weight_decay:
                grad = grad.add(p, alpha=opt.weight_decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(opt.eps)
            p.addcmul_(m / denom, neg_step_size)

    def _noisy_sgd(self, t: int, grads: list[torch.Tensor]) -> None:
        """`NoisySGD`: d_p = g_p + sigma_t ||g_p|| xi_p per member and tensor, then SGD."""
        i = t - self._chunk_start
        sigma = float(self._sigma[i])
        xi = self._noise[i]  # (n, size)
        offset = 0
        for p, grad in zip(self.params, grads):
            numel = p[0].numel()
            if sigma > 0:
                norm = torch.linalg.vector_norm(grad, dim=(1, 2), keepdim=True)
                noise = xi[:, offset : offset + numel].view_as(p)
                grad = grad + sigma * norm * noise
            self._sgd(p, grad)
            offset += numel
        self.noise_step += 1

    def _shrink_perturb(self, t: int) -> None:
        """`ShrinkPerturb.step` per member: p <- (1 - shrink) p + noise_std xi."""
        xi = self._sp_noise[t - self._chunk_start] if self.perturb else None  # (n, size)
        offset = 0
        for p in self.params:
            numel = p[0].numel()
            if self.shrink:
                p.mul_(1.0 - self.shrink)
            if xi is not None:
                p.add_(xi[:, offset : offset + numel].view_as(p), alpha=self.perturb)
            offset += numel

    def _cbp(self, t: int, h: torch.Tensor) -> None:
        """`ContinualBackprop.step` for every member at once; h (n, 1, units) pre-update."""
        cbp, w1, b1, w2, b2 = self.cbp, *self.params
        n, units, d = w1.shape
        draws = self._draws[t - self._chunk_start]  # (n, draws_per_step)
        uniform, util_uniforms, candidates = cbp.split_draws(draws, d)
        in_mag = w1.abs().mean(2) if cbp.needs_in_magnitude else None
        # Skipping idle steps reads r: free on the CPU, a synchronisation on a GPU.
        out_mag = w2[:, 0].abs()  # (n, units): one consumer, the mean over it is itself
        chosen = cbp.step(
            h, out_mag, in_mag, uniform, skip_if_none=self.on_cpu, util_uniforms=util_uniforms
        )
        if chosen is None or cbp.max_r == 0:
            return
        order, mask, _ = chosen
        if cbp.max_r > 1:  # unit order[k, j] takes candidate row j (j < r[k])
            position = torch.empty_like(order).scatter_(1, order, self._units.expand(n, -1))
            slot = position.clamp_(max=cbp.max_r - 1)[..., None].expand(n, units, d)
            candidates = candidates.gather(1, slot)  # (n, units, d)
        else:
            candidates = candidates.expand(n, units, d)
        torch.where(mask[..., None], uniform_rows(candidates, self.bound), w1, out=w1)
        b1.masked_fill_(mask[..., None], 0)
        if self.settings.cbp.bias_correction:
            fhat = torch.where(mask, cbp.corrected_mean(), 0)  # (n, units)
            b2.add_((w2 * fhat[:, None]).sum(2, keepdim=True))
        w2.masked_fill_(mask[:, None], 0)
        cbp.reset(mask)
        if self.optimizer == "adam":  # `reset_optimizer_state` of w1's rows, b1, w2's columns
            masks = [mask[..., None], mask[..., None], mask[:, None]]
            states = [self.exp_avg, self.exp_avg_sq] + ([self.steps] if self.element_steps else [])
            for state in states:
                for tensor, where in zip(state[:3], masks):
                    tensor.masked_fill_(where, 0)

    # --- reading out ---------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        """The stacked parameters under the module's names (biases as (n, out))."""
        return {
            name: p[..., 0] if name.endswith("bias") else p
            for name, p in zip(self.names, self.params)
        }

    def replacements(self) -> torch.Tensor:
        """(n,) units replaced so far (0 without CBP)."""
        if self.cbp is None:
            return torch.zeros(self.n, dtype=torch.int64)
        return self.cbp.replaced.long()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "params": [p.clone() for p in self.params],
            "adam_step": self.adam_step,
            "noise_step": self.noise_step,
            "noise_rng": [g.get_state() for g in self.noise_generators],
            "cbp_rng": [g.get_state() for g in self.cbp_generators],
            "shrink_perturb_rng": [g.get_state() for g in self.sp_generators],
        }
        if self.optimizer == "adam":
            state["exp_avg"] = [m.clone() for m in self.exp_avg]
            state["exp_avg_sq"] = [v.clone() for v in self.exp_avg_sq]
            if self.element_steps:
                state["steps"] = [t.clone() for t in self.steps]
        if self.cbp is not None:
            state["cbp"] = self.cbp.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, saved in zip(self.params, state["params"]):
            p.copy_(saved)
        self.adam_step = int(state["adam_step"])
        self.noise_step = int(state["noise_step"])
        for key, generators in (
            ("noise_rng", self.noise_generators),
            ("cbp_rng", self.cbp_generators),
            ("shrink_perturb_rng", self.sp_generators),
        ):
            for g, saved in zip(generators, state[key]):
                g.set_state(saved)
        if self.optimizer == "adam":
            names = ["exp_avg", "exp_avg_sq"] + (["steps"] if self.element_steps else [])
            for name in names:
                for tensor, saved in zip(getattr(self, name), state[name]):
                    tensor.copy_(saved)
        if self.cbp is not None:
            self.cbp.load_state_dict(state["cbp"])


class _NativeGroup(_Group):
    """All members of an `engine=native` trial (methods in NATIVE_METHODS) as one group, their
    chunk of steps run by the compiled loop (`core.experiments.bitflip_native`): plain SGD, and
    CBP from each member's own first CBP step (`CBPState` on (n, width) for every member; the
    members without CBP never touch theirs). fc1's weight is stored (n, d, h), the loop's layout;
    `w1` is its (n, h, d) view."""

    def __init__(self, settings: LearnerSettings, members: list[Member]) -> None:
        super().__init__(settings, "sgd", members)
        self.w1t = self.w1.transpose(1, 2).contiguous()  # (n, d, h)
        self.w1 = self.params[0] = self.w1t.transpose(1, 2)
        self.firsts = [settings.cbp_start(m.method) for m in members]
        self.starts = torch.tensor([-1 if s is None else s for s in self.firsts])
        self.cbp = settings.cbp_state(self.n)
        self.neg2lr = (2.0 * self.neg_lr).reshape(self.n).contiguous()  # as err * (2 * -lr)

    def begin_chunk(self, start: int, n: int) -> None:
        """Each CBP member's draws of its CBP steps in this chunk, as a single run draws them."""
        self._draw_cbp(start, n, self.firsts)

    def train_steps(self, start: int, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        bitflip_native.run_steps(
            start,
            x,
            y,
            out,
            self.w1t,
            self.b1,
            self.w2,
            self.b2,
            self.neg2lr,
            self.starts,
            self._draws,
            self.cbp,
            self.settings.cbp.bias_correction,
            self.bound,
        )

    def replacements(self) -> torch.Tensor:
        return self.cbp.replaced.long()


class BitFlipEnsemble:
    """M members (any mix of METHODS, learning rates and seeds) of one width, stacked by method;
    with `native`, all members (NATIVE_METHODS) in one group run by the compiled loop."""

    def __init__(
        self, settings: LearnerSettings, members: list[Member], native: bool = False
    ) -> None:
        self.members = members
        self.groups: list[_Group] = []
        self.index: list[torch.Tensor] = []  # member positions of each group
        if native:
            self.groups.append(_NativeGroup(settings, members))
            self.index.append(torch.arange(len(members)))
        for method in METHODS if not native else ():
            ks = [k for k, m in enumerate(members) if m.method == method]
            if ks:
                self.groups.append(_Group(settings, method, [members[k] for k in ks]))
                self.index.append(torch.tensor(ks))
        self._single = len(self.groups) == 1
        self._where = {  # member k -> (its group, its position there)
            int(k): (group, j)
            for group, ks in zip(self.groups, self.index)
            for j, k in enumerate(ks)
        }
        # The weights are overwritten before each use; the seed keeps the global RNG untouched.
        self._template = build_model(settings.model_config(), seed=0).to(settings.dtype)

    def begin_chunk(self, start: int, n: int) -> None:
        for group in self.groups:
            group.begin_chunk(start, n)

    def train_chunk(self, start: int, x: torch.Tensor, y: torch.Tensor, losses: torch.Tensor):
        """Steps start .. start + L - 1 on x (L, M, d), y (L, M); losses (L, M) written."""
        for group, ks in zip(self.groups, self.index):
            if self._single:
                xs, ys, out = x, y, losses
            else:
                xs, ys, out = x[:, ks], y[:, ks], torch.empty(len(x), group.n, dtype=losses.dtype)
            group.train_steps(start, xs, ys, out)
            if not self._single:
                losses[:, ks] = out

    def model_for_probe(self) -> nn.Module:
        """The module `load_member(k)` fills with member k's weights (one, shared by all)."""
        return self._template

    @torch.no_grad()
    def load_member(self, k: int) -> None:
        group, j = self._where[k]
        for name, value in group.weights().items():
            self._template.get_parameter(name).copy_(value[j])

    def _gather(self, per_group: list[torch.Tensor]) -> torch.Tensor:
        out = torch.empty(len(self.members), *per_group[0].shape[1:], dtype=per_group[0].dtype)
        for value, ks in zip(per_group, self.index):
            out[ks] = value
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        """Stacked (M, ...) weights, member order."""
        per = [g.weights() for g in self.groups]
        return {name: self._gather([w[name] for w in per]) for name in per[0]}

    def replacements(self) -> torch.Tensor:
        return self._gather([g.replacements() for g in self.groups])

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [g.state_dict() for g in self.groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for group, saved in zip(self.groups, state["groups"]):
            group.load_state_dict(saved)


class EagerBitFlip:
    """One member as a plain run: `nn.Module`, autograd, a torch optimizer (or
    `ElementwiseAdam`, `NoisySGD`), `ContinualBackprop`, `ShrinkPerturb`, in the order
    optimizer step, CBP, shrink-and-perturb (as `core.run.build.Interventions`).

    The reference the ensemble is tested against, and the baseline of the benchmark.
    """

    def __init__(self, settings: LearnerSettings, member: Member) -> None:
        s = settings
        self.settings = settings
        self.member = member
        self.members = [member]
        self.model: nn.Module = build_model(s.model_config(), seed=seed_for(member.seed, "init"))
        self.model.to(s.dtype)
        params = list(self.model.parameters())
        spec = replace(s.optimizer, name=member.optimizer, lr=member.lr)  # momentum 0 (bit flip)
        self.optimizer = build_optimizer(spec, params, member_stream(member.seed, "noise"))
        sp = s.shrink_perturb
        self.shrink_perturb = (
            ShrinkPerturb(
                params,
                shrink=sp.shrink,
                noise_std=sp.noise_std,
                generator=member_stream(member.seed, "shrink_perturb"),
            )
            if sp.enabled and (sp.shrink or sp.noise_std)
            else None
        )
        self.cbp_start = s.cbp_start(member.method)
        self.cbp: ContinualBackprop | None = None

    def _start_cbp(self) -> None:
        self.cbp = ContinualBackprop(
            self.model,
            self.optimizer,
            **self.settings.cbp_options(),
            bias_correction=self.settings.cbp.bias_correction,
            generator=member_stream(self.member.seed, "cbp"),
        )

    def begin_chunk(self, start: int, n: int) -> None:
        """Nothing to pre-draw: this learner draws step by step."""

    def train_chunk(self, start: int, x: torch.Tensor, y: torch.Tensor, losses: torch.Tensor):
        for i in range(len(x)):
            t = start + i
            if self.cbp is None and self.cbp_start is not None and t >= self.cbp_start:
                self._start_cbp()
            pred = self.model(x[i])  # (1, d) -> (1, 1)
            loss = F.mse_loss(pred, y[i][:, None])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            if self.cbp is not None:
                self.cbp.step()
            if self.shrink_perturb is not None:
                self.shrink_perturb.step()
            losses[i] = loss.detach()

    def model_for_probe(self) -> nn.Module:
        return self.model

    def load_member(self, k: int) -> None:
        """The model is the member's."""

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach()[None] for name, p in self.model.named_parameters()}

    def replacements(self) -> torch.Tensor:
        if self.cbp is None:
            return torch.zeros(1, dtype=torch.int64)
        return self.cbp.states[0].replaced.long()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "cbp": None if self.cbp is None else self.cbp.state_dict(),
            "shrink_perturb": None
            if self.shrink_perturb is None
            else self.shrink_perturb.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["cbp"] is not None:
            self._start_cbp()
            self.cbp.load_state_dict(state["cbp"])
        if state["shrink_perturb"] is not None:
            self.shrink_perturb.load_state_dict(state["shrink_perturb"])
