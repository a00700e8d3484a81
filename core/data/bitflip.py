"""The bit-flipping (slowly-changing regression) stream, vectorised over ensemble members.

Paper §4 and §B.1.1 (Dohare et al. 2024's "slowly-changing regression"): an input of m bits plus
a constant bias bit; the first f bits are "slow": at every multiple of T steps one of them, chosen
uniformly, is inverted (`flip="one"`, the paper) or all f are redrawn (`flip="redraw"`, Dohare et
al.'s data generator); the other m - f bits are redrawn every step. The target is a fixed random
network of LTUs (linear threshold units): weights (including the bias bit's), output weights and
output bias uniform on {-1, +1}; unit i fires when its input sum passes its threshold theta_i
(`ltu_thresholds`: three documented variants).

Each member's stream comes from its own seeds, so member k of a stacked stream equals the stream
built for that member alone. The data generator of a member draws, in this order: the target
(hidden weights (n_t, m+1), output weights (n_t,), output bias (1,)), the first slow bits (f,);
then per period p the flip (index (1,) for p >= 1; `flip="redraw"`: f new slow bits) and the
period's fast bits (T, m - f). The probe inputs (probe_size, m) come from a separate generator, so
the probe size never changes a training input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

THRESHOLDS = ("code", "latex", "dohare")
FLIPS = ("one", "redraw")
MAX_FAST_BITS = 12


@dataclass(frozen=True)
class BitFlipProblem:
    """The problem's constants (paper §B.1.1; Dohare et al.'s slowly-changing regression)."""

    num_bits: int = 20  # m: input bits (plus a constant bias bit unless bias_input=False)
    num_slow: int = 15  # f: slow bits, indices 0..f-1
    flip_period: int = 10_000  # T: the slow bits change at every multiple of T steps
    target_hidden: int = 100  # LTUs in the target network
    beta: float = 0.7  # threshold parameter
    threshold: str = "code"  # code (the paper's script) | latex (the paper's formula) | dohare
    flip: str = "one"  # one: flip one slow bit (paper) | redraw: redraw all (Dohare's data)
    bias_input: bool = True  # the learner sees the constant bias bit (False: m inputs, Dohare's)

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold={self.threshold!r}; valid: {', '.join(THRESHOLDS)}")
        if self.flip not in FLIPS:
            raise ValueError(f"flip={self.flip!r}; valid: {', '.join(FLIPS)}")
        if not 0 < self.num_slow <= self.num_bits or self.flip_period < 1:
            raise ValueError("need 0 < num_slow <= num_bits and flip_period >= 1")

    @property
    def input_dim(self) -> int:
        """The learner's input size: m + 1 with the bias bit, m without."""
        return self.num_bits + int(self.bias_input)


def ltu_thresholds(weights: torch.Tensor, problem: BitFlipProblem) -> torch.Tensor:
    """theta (..., n_t) for LTU weights (..., n_t, m+1) in {-1, +1} (last column: the bias bit's,
    i.e. the LTU's bias b_i); n_i = #{j < m : w_ij < 0} the negative input weights.

    - `code` (default; the paper's bit-flip script, which made its figures):
      theta_i = (m + 1) beta - S_i, S_i = n_i - b_i / 2; fires when w_i . x > theta_i.
    - `latex` (the formula as printed in the paper's §B.1.1): theta_i = m beta - S_i with the same
      S_i; fires when w_i . x - theta_i >= 0.
    - `dohare` (Dohare et al.'s `FixLTUNet`): theta_i = (m + 1) beta - S_i with
      S_i = (m - sum_{j<m} w_ij + b_i) / 2 = n_i + b_i / 2; fires when w_i . x + b_i > theta_i.

    w_i . x includes the bias bit's b_i * 1. Pre-activations are integers and every theta has a
    fractional part at the defaults, so the comparison's strictness never matters there; m beta is
    rounded to 1e-9 so that 20 * 0.7 is exactly 14.
    """
    m, beta = problem.num_bits, problem.beta
    negative = (weights[..., :m] < 0).sum(-1).to(torch.float64)
    bias = weights[..., m].to(torch.float64)
    if problem.threshold == "dohare":
        return round((m + 1) * beta, 9) - (negative + 0.5 * bias)
    scale = m if problem.threshold == "latex" else m + 1
    return round(scale * beta, 9) - (negative - 0.5 * bias)


def ltu_fires(pre: torch.Tensor, theta: torch.Tensor, problem: BitFlipProblem) -> torch.Tensor:
    """The LTU outputs (0/1, bool) for pre-activations `pre` and thresholds `theta`."""
    return pre >= theta if problem.threshold == "latex" else pre > theta


class BitFlipStream:
    """The streams of `len(seeds)` members; `next_chunk(L)` gives the next L steps of all.

    x: (L, members, input_dim) with columns [slow bits | fast bits | 1] (no trailing 1 with
    `bias_input=False`); y: (L, members). `seeds` seed each member's data generator (target and
    stream), `probe_seeds` its probe generator: `probe_inputs` (members, probe_size, input_dim),
    a fixed held-out set (all m bits uniform) for the metrics.
    """

    def __init__(
        self,
        problem: BitFlipProblem,
        seeds: list[int],
        probe_seeds: list[int],
        probe_size: int = 128,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(probe_seeds) != len(seeds):
            raise ValueError("one probe seed per member")
        self.problem = problem
        self.dtype = dtype
        p = problem
        m, f, n_t = p.num_bits, p.num_slow, p.target_hidden
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        weights, out_w, out_b, slow = [], [], [], []
        for g in self.generators:
            weights.append(torch.randint(0, 2, (n_t, m + 1), generator=g) * 2 - 1)
            out_w.append(torch.randint(0, 2, (n_t,), generator=g) * 2 - 1)
            out_b.append(torch.randint(0, 2, (1,), generator=g) * 2 - 1)
            slow.append(torch.randint(0, 2, (f,), generator=g))
        probe = [
            torch.randint(0, 2, (probe_size, m), generator=torch.Generator().manual_seed(int(s)))
            for s in probe_seeds
        ]
        self.weights = torch.stack(weights).to(dtype)  # (M, n_t, m+1)
        self.out_weights = torch.stack(out_w).to(dtype)  # (M, n_t)
        self.out_bias = torch.stack(out_b).to(dtype)  # (M, 1)
        # Pre-activations are integers, so theta in `dtype` decides exactly as in float64.
        self.theta = ltu_thresholds(torch.stack(weights), p).to(dtype)  # (M, n_t)
        self.probe_inputs = self._learner_input(torch.stack(probe).to(dtype))
        self.slow = torch.stack(slow).to(torch.uint8)  # (M, f): the slow bits of this period
        fast_bits = m - f
        if fast_bits > MAX_FAST_BITS:
            raise ValueError(
                f"num_bits - num_slow = {fast_bits} > {MAX_FAST_BITS}: the stream tabulates the "
                "target over the 2^(m - f) fast-bit patterns"
            )
        self._shifts = torch.arange(fast_bits)
        self._patterns = ((torch.arange(2**fast_bits)[:, None] >> self._shifts) & 1).to(dtype)
        self.position = 0  # the next step's index
        self._period = -1
        self._start_period(0)

    def _learner_input(self, bits: torch.Tensor) -> torch.Tensor:
        """(..., n, m) bits -> the learner's input: the bias bit appended with `bias_input`."""
        if not self.problem.bias_input:
            return bits
        return torch.cat([bits, torch.ones(*bits.shape[:-1], 1, dtype=bits.dtype)], dim=-1)

    @property
    def members(self) -> int:
        return len(self.generators)

    def _start_period(self, period: int) -> None:
        """Draw period `period`'s flip and fast bits; keep what a checkpoint needs to redo it."""
        p = self.problem
        self._saved = {
            "rng": [g.get_state() for g in self.generators],
            "slow": self.slow.clone(),
            "period": period,
        }
        fast = []
        for k, g in enumerate(self.generators):
            if period > 0:
                if p.flip == "one":
                    i = int(torch.randint(0, p.num_slow, (1,), generator=g))
                    self.slow[k, i] ^= 1
                else:
                    self.slow[k] = torch.randint(0, 2, (p.num_slow,), generator=g).to(torch.uint8)
            fast.append(
                torch.randint(
                    0, 2, (p.flip_period, p.num_bits - p.num_slow), generator=g, dtype=torch.uint8
                )
            )
        self._fast = torch.stack(fast)  # (M, T, m - f)
        self._period = period
        # The target is constant given the slow bits, so tabulate it over the 2^(m-f) fast-bit
        # patterns once per period; a step's target is then a lookup.
        w = self.weights
        slow_pre = (
            torch.einsum("mhf,mf->mh", w[:, :, : p.num_slow], self.slow.to(self.dtype))
            + w[:, :, p.num_bits]
        )  # (M, n_t): slow bits and the bias bit
        pre = slow_pre[:, None] + torch.einsum(
            "pj,mhj->mph", self._patterns, w[:, :, p.num_slow : p.num_bits]
        )  # (M, patterns, n_t)
        self._table = self._readout(pre)  # (M, patterns)
        self._pattern_index = (self._fast.long() << self._shifts).sum(-1)  # (M, T)

    def next_chunk(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `length` steps: x (length, M, input_dim), y (length, M)."""
        p = self.problem
        xs, ys = [], []
        while length > 0:
            period, offset = divmod(self.position, p.flip_period)
            if period != self._period:
                self._start_period(period)
            n = min(length, p.flip_period - offset)
            fast = self._fast[:, offset : offset + n].to(self.dtype)  # (M, n, m - f)
            y = self._table.gather(1, self._pattern_index[:, offset : offset + n])  # (M, n)
            slow = self.slow.to(self.dtype)[:, None].expand(-1, n, -1)
            x = self._learner_input(torch.cat([slow, fast], dim=2))  # (M, n, input_dim)
            xs.append(x.transpose(0, 1))
            ys.append(y.transpose(0, 1))
            self.position += n
            length -= n
        return torch.cat(xs).contiguous(), torch.cat(ys).contiguous()

    def _readout(self, pre: torch.Tensor) -> torch.Tensor:
        """y (M, n) from LTU pre-activations (M, n, n_t)."""
        fires = ltu_fires(pre, self.theta[:, None], self.problem).to(self.dtype)
        return torch.bmm(fires, self.out_weights[:, :, None])[..., 0] + self.out_bias

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The target network evaluated directly on learner inputs x (M, n, input_dim): y (M, n)."""
        bits = x[..., : self.problem.num_bits].to(self.dtype)
        pre = torch.bmm(bits, self.weights[:, :, : self.problem.num_bits].transpose(1, 2))
        return self._readout(pre + self.weights[:, None, :, self.problem.num_bits])

    def state_dict(self) -> dict[str, Any]:
        """What resumes the stream at `position`: the generators and slow bits at the start of the
        current period (its draws are redone on load)."""
        return {**self._saved, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, saved in zip(self.generators, state["rng"]):
            g.set_state(saved)
        self.slow = state["slow"].clone()
        self._start_period(int(state["period"]))
        self.position = int(state["position"])
