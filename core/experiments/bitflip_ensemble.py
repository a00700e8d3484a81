"""Bit-flip learners: the batched ensemble (many members as stacked weights) and the plain eager
single run it is checked against.

Both have the same interface, driven by `core.experiments.bitflip.train` (the one training loop):
`begin_chunk(start, n)` (pre-draw the chunk's randomness), `train_chunk(start, x, y, losses)` for
steps start .. start + n - 1 (x: (n, M, d), y: (n, M); the prequential squared errors written to
losses (n, M)), `model_for_probe()` and `load_member(k)` (an `nn.Module` holding member k's
weights, for the `core.metrics` probe), `weights()`, `replacements()`, `state_dict()` /
`load_state_dict()`.

`BitFlipEnsemble` runs M members (method x learning rate x seed, one width) of the 21 -> h -> 1
learner: members are grouped by method, each group holds (n, ...) stacked weights and does a
manual forward/backward with batched matmuls (`torch.baddbmm`/`bmm`) and in-place updates, with no
host synchronisation inside a step. Member k draws every random number from its own streams
(`member_seed(seed, purpose)`): the data, the initialisation, the noise of noisy SGD and CBP's
draws; the chunk's noise and CBP draws are pre-drawn per member, in the same order a single run
draws them step by step (see `NoisySGD` and `ContinualBackprop`). So member k's weights equal
those of `EagerBitFlip` (an `nn.Module`, autograd, `torch.optim.SGD`/`Adam`, `NoisySGD`,
`ContinualBackprop`) for the same member, up to float rounding (tested: <= 1e-6 over 10,000
steps). CBP itself is the one `core.optim.CBPState`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.models import ModelConfig, activation_gain, build_model
from core.models.blocks import LEAKY_RELU_SLOPE
from core.optim import CBPState, ContinualBackprop, NoisySGD, noise_size, uniform_rows

METHODS = ("sgd", "adam", "noisy_sgd", "cbp", "sgd_then_cbp")
PURPOSES = ("data", "init", "noise", "cbp", "probe")
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults (paper_spec §5.2)
ADAM_EPS = 1e-8
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

_aten = torch.ops.aten

# activation -> (forward(z), backward(grad_a, z, a)): the backward kernels autograd itself uses.
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
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
    "identity": (lambda z: z, lambda g, z, a: g),
}


def member_seed(seed: int, purpose: str) -> int:
    """The seed of member `seed`'s random stream for `purpose` (one of PURPOSES)."""
    state = np.random.SeedSequence([int(seed), PURPOSES.index(purpose)]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> np.uint64(1))


@dataclass(frozen=True)
class Member:
    """One run of the ensemble."""

    method: str  # one of METHODS
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-lr{self.lr:g}-seed{self.seed}"


@dataclass(frozen=True)
class LearnerSettings:
    """What every member of a trial shares."""

    width: int
    activation: str
    input_dim: int
    noise_sigma0: float
    noise_decay: float
    cbp_rate: float
    cbp_decay: float
    cbp_maturity: int
    cbp_util: str
    cbp_rounding: str
    cbp_bias_correction: bool
    switch_step: int  # sgd_then_cbp: first step with CBP
    dtype: torch.dtype

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            arch="bitflip",
            in_shape=(self.input_dim,),
            num_classes=1,
            activation=self.activation,
            hidden_sizes=(self.width,),
        )

    def cbp_start(self, method: str) -> int | None:
        """The first step with CBP for `method`, or None."""
        return {"cbp": 0, "sgd_then_cbp": self.switch_step}.get(method)

    def cbp_state(self, members: int) -> CBPState:
        return CBPState(
            members,
            self.width,
            replacement_rate=self.cbp_rate,
            decay=self.cbp_decay,
            maturity=self.cbp_maturity,
            util_type=self.cbp_util,
            rounding=self.cbp_rounding,
            dtype=self.dtype,
        )


def _cbp_layer_generator(seed: int) -> torch.Generator:
    """The hidden layer's CBP stream, spawned as `ContinualBackprop` spawns it from its root."""
    root = torch.Generator().manual_seed(member_seed(seed, "cbp"))
    return torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=root)))


class _Group:
    """The members of one method as stacked weights (n, ...), updated in place."""

    def __init__(self, settings: LearnerSettings, method: str, members: list[Member]) -> None:
        s = settings
        self.settings = settings
        self.method = method
        self.n = n = len(members)
        models = [build_model(s.model_config(), seed=member_seed(m.seed, "init")) for m in members]

        def stacked(name: str) -> torch.Tensor:
            return torch.stack([m.get_parameter(name).detach() for m in models]).to(s.dtype)

        self.w1 = stacked("fc1.weight")  # (n, h, d)
        self.b1 = stacked("fc1.bias")[..., None]  # (n, h, 1)
        self.w2 = stacked("fc2.weight")  # (n, 1, h)
        self.b2 = stacked("fc2.bias")[..., None]  # (n, 1, 1)
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.lr = torch.tensor([m.lr for m in members], dtype=torch.float64).view(n, 1, 1)
        self.neg_lr = (-self.lr).to(s.dtype)
        self.act, self.act_grad = ACTIVATIONS[s.activation]
        self.adam_step = 0
        if method == "adam":
            self.exp_avg = [torch.zeros_like(p) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.noise_generators = [
            torch.Generator().manual_seed(member_seed(m.seed, "noise")) for m in members
        ]
        self.noise_step = 0
        self.cbp_start = s.cbp_start(method)
        self.cbp = s.cbp_state(n) if self.cbp_start is not None else None
        self.cbp_generators = [_cbp_layer_generator(m.seed) for m in members]
        self.bound = activation_gain(s.activation) * math.sqrt(3.0 / s.input_dim)
        self._units = torch.arange(s.width)
        self.on_cpu = self.w1.device.type == "cpu"
        self._chunk_start = 0
        self._noise = None
        self._draws = None

    # --- randomness of one chunk, pre-drawn per member ----------------------------------------

    def begin_chunk(self, start: int, n: int) -> None:
        self._chunk_start = start
        s = self.settings
        if self.method == "noisy_sgd":
            sigmas = s.noise_sigma0 * s.noise_decay ** np.arange(
                self.noise_step, self.noise_step + n
            )
            self._sigma = sigmas
            noisy = int((sigmas > 0).sum())  # sigma_t is non-increasing: the first `noisy` steps
            size = noise_size(sum(p[0].numel() for p in self.params))
            self._noise = torch.zeros(n, self.n, size, dtype=s.dtype)  # (n steps, members, size)
            for k, g in enumerate(self.noise_generators):
                self._noise[:noisy, k] = torch.randn(noisy, size, generator=g, dtype=s.dtype)
        if self.cbp is not None:
            first = max(start, self.cbp_start)
            active = max(0, start + n - first)  # steps of this chunk with CBP
            size = 1 + self.cbp.max_r * s.input_dim
            self._draws = torch.zeros(n, self.n, size, dtype=s.dtype)
            for k, g in enumerate(self.cbp_generators):
                self._draws[n - active :, k] = torch.rand(active, size, generator=g, dtype=s.dtype)

    # --- one step ------------------------------------------------------------------------------

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor, loss_out: torch.Tensor) -> None:
        """x (n, d, 1), y (n, 1, 1), loss_out (n, 1, 1); in-place update of every member."""
        w1, b1, w2, b2 = self.params
        z = torch.baddbmm(b1, w1, x)  # (n, h, 1)
        a = self.act(z)
        err = torch.baddbmm(b2, w2, a) - y  # (n, 1, 1): prediction - target
        torch.mul(err, err, out=loss_out)
        a_t = a.transpose(1, 2)  # (n, 1, h)
        x_t = x.transpose(1, 2)  # (n, 1, d)
        # Outer products as broadcast multiplies: batched matmuls with an inner size of 1 are slow.
        if self.method == "adam" or self.method == "noisy_sgd":
            g = err * 2.0  # d loss / d prediction
            grad_z = self.act_grad(w2.transpose(1, 2) * g, z, a)  # (n, h, 1)
            grads = [grad_z * x_t, grad_z, g * a_t, g]
            if self.method == "adam":
                self._adam(grads)
            else:
                self._noisy_sgd(t, grads)
        else:
            g = err * (2.0 * self.neg_lr)  # -lr * d loss / d prediction
            grad_z = self.act_grad(w2.transpose(1, 2) * g, z, a)  # -lr * d loss / d z
            w2.addcmul_(g, a_t)
            b2.add_(g)
            w1.addcmul_(grad_z, x_t)
            b1.add_(grad_z)
            if self.cbp is not None and t >= self.cbp_start:
                self._cbp(t, a_t)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.Adam's update (single-tensor form) with a per-member learning rate."""
        beta1, beta2 = ADAM_BETAS
        self.adam_step += 1
        neg_step_size = (-self.lr / (1 - beta1**self.adam_step)).to(self.settings.dtype)
        bias_correction2_sqrt = (1 - beta2**self.adam_step) ** 0.5
        for p, grad, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
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
            p.addcmul_(grad, self.neg_lr)
            offset += numel
        self.noise_step += 1

    def _cbp(self, t: int, h: torch.Tensor) -> None:
        """`ContinualBackprop.step` for every member at once; h (n, 1, units) pre-update."""
        cbp, w1, b1, w2, b2 = self.cbp, *self.params
        draws = self._draws[t - self._chunk_start]  # (n, 1 + max_r * d)
        in_mag = w1.abs().mean(2) if cbp.needs_in_magnitude else None
        # Skipping idle steps reads r: free on the CPU, a synchronisation on a GPU.
        out_mag = w2[:, 0].abs()  # (n, units): one consumer, the mean over it is itself
        chosen = cbp.step(h, out_mag, in_mag, draws[:, 0], skip_if_none=self.on_cpu)
        if chosen is None or cbp.max_r == 0:
            return
        order, mask, _ = chosen
        n, units, d = w1.shape
        candidates = draws[:, 1:].view(n, cbp.max_r, d)
        if cbp.max_r > 1:  # unit order[k, j] takes candidate row j (j < r[k])
            position = torch.empty_like(order).scatter_(1, order, self._units.expand(n, -1))
            slot = position.clamp_(max=cbp.max_r - 1)[..., None].expand(n, units, d)
            candidates = candidates.gather(1, slot)  # (n, units, d)
        torch.where(mask[..., None], uniform_rows(candidates, self.bound), w1, out=w1)
        b1.masked_fill_(mask[..., None], 0)
        if self.settings.cbp_bias_correction:
            fhat = torch.where(mask, cbp.corrected_mean(), 0)  # (n, units)
            b2.add_((w2 * fhat[:, None]).sum(2, keepdim=True))
        w2.masked_fill_(mask[:, None], 0)
        cbp.reset(mask)

    # --- reading out ---------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        w1, b1, w2, b2 = self.params
        return {
            "fc1.weight": w1,
            "fc1.bias": b1[..., 0],
            "fc2.weight": w2,
            "fc2.bias": b2[..., 0],
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
        }
        if self.method == "adam":
            state["exp_avg"] = [m.clone() for m in self.exp_avg]
            state["exp_avg_sq"] = [v.clone() for v in self.exp_avg_sq]
        if self.cbp is not None:
            state["cbp"] = self.cbp.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, saved in zip(self.params, state["params"]):
            p.copy_(saved)
        self.adam_step = int(state["adam_step"])
        self.noise_step = int(state["noise_step"])
        for g, saved in zip(self.noise_generators, state["noise_rng"]):
            g.set_state(saved)
        for g, saved in zip(self.cbp_generators, state["cbp_rng"]):
            g.set_state(saved)
        if self.method == "adam":
            for m, saved in zip(self.exp_avg, state["exp_avg"]):
                m.copy_(saved)
            for v, saved in zip(self.exp_avg_sq, state["exp_avg_sq"]):
                v.copy_(saved)
        if self.cbp is not None:
            self.cbp.load_state_dict(state["cbp"])


class BitFlipEnsemble:
    """M members (any mix of METHODS, learning rates and seeds) of one width, stacked by method."""

    def __init__(self, settings: LearnerSettings, members: list[Member]) -> None:
        self.members = members
        self.groups: list[_Group] = []
        self.index: list[torch.Tensor] = []  # member positions of each group
        for method in METHODS:
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
            xs = xs[..., None]  # (L, n, d, 1)
            ys = ys[..., None, None]  # (L, n, 1, 1)
            out3 = out[..., None, None]
            for i in range(len(xs)):
                group.step(start + i, xs[i], ys[i], out3[i])
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
    """One member as a plain run: `nn.Module`, autograd, a torch optimizer, `ContinualBackprop`.

    The reference the ensemble is tested against, and the baseline of the benchmark.
    """

    def __init__(self, settings: LearnerSettings, member: Member) -> None:
        s = settings
        self.settings = settings
        self.member = member
        self.members = [member]
        self.model: nn.Module = build_model(s.model_config(), seed=member_seed(member.seed, "init"))
        self.model.to(s.dtype)
        params = self.model.parameters()
        if member.method == "adam":
            self.optimizer = torch.optim.Adam(params, lr=member.lr)
        elif member.method == "noisy_sgd":
            self.optimizer = NoisySGD(
                params,
                lr=member.lr,
                sigma0=s.noise_sigma0,
                decay=s.noise_decay,
                generator=torch.Generator().manual_seed(member_seed(member.seed, "noise")),
            )
        else:
            self.optimizer = torch.optim.SGD(params, lr=member.lr)
        self.cbp_start = s.cbp_start(member.method)
        self.cbp: ContinualBackprop | None = None

    def _start_cbp(self) -> None:
        s = self.settings
        self.cbp = ContinualBackprop(
            self.model,
            self.optimizer,
            replacement_rate=s.cbp_rate,
            decay=s.cbp_decay,
            maturity=s.cbp_maturity,
            util_type=s.cbp_util,
            rounding=s.cbp_rounding,
            bias_correction=s.cbp_bias_correction,
            generator=torch.Generator().manual_seed(member_seed(self.member.seed, "cbp")),
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["cbp"] is not None:
            self._start_cbp()
            self.cbp.load_state_dict(state["cbp"])
