"""The bit-flip ensemble's compiled loop (`engine=native`): SGD and CBP for many members and many
steps in one call.

The batched engine (`bitflip_engines._Group`) issues ~12 tensor operations per step for SGD and
~30 for CBP, so at a few hundred members its step is dispatch-bound (Python and ATen overhead) and
its batched GEMVs read the stacked weights from memory. Members are independent, so this loop runs
them one after the other and, for each, every step of the chunk while its weights stay in the L1
cache: d -> h -> 1 with relu, online squared error, plain SGD (`torch.optim.SGD`, no momentum, no
weight decay), and CBP (`core.optim.CBPState`'s step: every utility type, carry or Bernoulli
rounding, bias correction, the replaced unit's incoming row from the step's pre-drawn candidate
row, its outgoing weight, utility, mean and age zeroed) from each member's own first CBP step.
It reads and writes the same tensors the batched engine keeps (the stacked weights, `CBPState`'s
age/util/mean/counts), so checkpoints, probes and records are the batched engine's.

The C source is compiled once per machine with the system C compiler (`cc`, or `$CC`) into
`$XDG_CACHE_HOME/lop-bitflip/` (default `~/.cache`); a config with `engine=native` is refused
while it is built (`check_compiler`) when the compiler is not on PATH. IEEE arithmetic throughout
(no -ffast-math, no FMA contraction), a fixed summation order per member: member k's numbers do
not depend on the other members (tested: member k of an ensemble equals member k alone bit for
bit, and the plain eager run to 1e-9 in float64).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

UTIL_CODES = {
    "contribution": 0,
    "zero_contribution": 1,
    "adaptable_contribution": 2,
    "feature_by_input": 3,
    "weight": 4,
    "adaptation": 5,
    "random": 6,
}
ROUNDING_CODES = {"carry": 0, "bernoulli": 1}

_TEMPLATE = r"""
/* Steps start .. start+L-1 of members 0..n-1 (member k's slice of every array).
   x (n, L, d), y (n, L), loss (n, L): member-major, each member's chunk contiguous;
   w1t (n, d, h) = fc1.weight transposed, b1 (n, h), w2 (n, h), b2 (n), neg2lr (n) = -2 lr;
   cbp_start (n): first step with CBP (-1: never); draws (L, n, P) the step's CBP uniforms;
   age, util, mean (n, h); seen, replaced (n) float64; powers[a] = decay^a (a < n_powers). */
void NAME(int64_t n, int64_t L, int64_t d, int64_t h, int64_t start,
          const T *x, const T *y, T *loss, T *w1t, T *b1, T *w2, T *b2, const T *neg2lr,
          const int64_t *cbp_start, const T *draws, int64_t P, T *age, T *util, T *mean,
          double *seen, double *replaced, double rate, double decay, double maturity,
          int64_t util_type, int64_t bernoulli, int64_t bias_correction, int64_t max_r,
          double bound_d, const T *powers, int64_t n_powers) {
  T *z = malloc(sizeof(T) * h), *a = malloc(sizeof(T) * h), *gz = malloc(sizeof(T) * h);
  T *corr = malloc(sizeof(T) * h), *key = malloc(sizeof(T) * h), *inm = malloc(sizeof(T) * h);
  char *chosen = malloc(h);
  int64_t *picked = malloc(sizeof(int64_t) * (max_r > 0 ? max_r : 1));
  const T eta = (T)decay, w = (T)(1.0 - decay), bound = (T)bound_d;
  const int64_t offset = 1 + (util_type == 6 ? h : 0);  /* candidate rows in the draws */
/* torch.lerp's formula (self, end, weight w) */
#define LERP(s, e) (w < (T)0.5 ? (s) + w * ((e) - (s)) : (e) - ((e) - (s)) * ((T)1 - w))
  /* member by member, all L steps while its weights stay in the L1 cache */
  for (int64_t k = 0; k < n; k++) {
    T *W = w1t + k * d * h, *B1 = b1 + k * h, *W2 = w2 + k * h, *B2 = b2 + k;
    T *AGE = age + k * h, *UTIL = util + k * h, *MEAN = mean + k * h;
    const T lr2 = neg2lr[k];
    for (int64_t t = 0; t < L; t++) {
      const T *xs = x + (k * L + t) * d;
      for (int64_t i = 0; i < h; i++) z[i] = 0;
      for (int64_t j = 0; j < d; j++) {
        const T xj = xs[j], *Wj = W + j * h;
        for (int64_t i = 0; i < h; i++) z[i] += Wj[i] * xj;
      }
      for (int64_t i = 0; i < h; i++) {
        z[i] += B1[i];
        a[i] = (z[i] > 0 || z[i] != z[i]) ? z[i] : 0;  /* relu, NaN kept */
      }
      /* the output's dot product in LANES partial sums (vectorised, a fixed order) */
      T lane[LANES] = {0}, pred = 0;
      int64_t i0 = 0;
      for (; i0 + LANES <= h; i0 += LANES)
        for (int64_t l = 0; l < LANES; l++) lane[l] += W2[i0 + l] * a[i0 + l];
      for (int64_t l = 0; l < LANES; l++) pred += lane[l];
      for (; i0 < h; i0++) pred += W2[i0] * a[i0];
      pred += B2[0];
      const T err = pred - y[k * L + t];
      loss[k * L + t] = err * err;
      const T g = err * lr2;  /* -lr d loss / d prediction */
      for (int64_t i = 0; i < h; i++) {
        gz[i] = (a[i] > 0 || a[i] != a[i]) ? W2[i] * g : 0;
        W2[i] += g * a[i];
        B1[i] += gz[i];
      }
      B2[0] += g;
      for (int64_t j = 0; j < d; j++) {
        const T xj = xs[j];
        T *Wj = W + j * h;
        for (int64_t i = 0; i < h; i++) Wj[i] += gz[i] * xj;
      }
      if (cbp_start[k] < 0 || start + t < cbp_start[k]) continue;
      /* CBP (core.optim.CBPState.step), h = a (pre-update), weights post-update */
      const T *u = draws + (t * n + k) * P;
      if (util_type == 2 || util_type == 3 || util_type == 5) {
        for (int64_t i = 0; i < h; i++) inm[i] = 0;
        for (int64_t j = 0; j < d; j++)
          for (int64_t i = 0; i < h; i++) inm[i] += ABS(W[j * h + i]);
        for (int64_t i = 0; i < h; i++) inm[i] /= (T)d;
      }
      for (int64_t i = 0; i < h; i++) {
        AGE[i] += 1;
        const int64_t years = (int64_t)AGE[i];
        corr[i] = 1 - (years < n_powers ? powers[years] : POW(eta, AGE[i]));
      }
      for (int64_t i = 0; i < h; i++) MEAN[i] = LERP(MEAN[i], a[i]);
      if (util_type == 0) {  /* contribution (the default): its own loop, vectorised */
        for (int64_t i = 0; i < h; i++) UTIL[i] = LERP(UTIL[i], ABS(W2[i]) * ABS(a[i]));
      } else if (util_type != 6) {
        for (int64_t i = 0; i < h; i++) {
          T yv, dev = ABS(a[i] - MEAN[i] / corr[i]), out = ABS(W2[i]);
          switch (util_type) {
            case 1: yv = out * dev; break;
            case 2: yv = out * dev / inm[i]; break;
            case 3: yv = dev / inm[i]; break;
            case 4: yv = out; break;
            default: yv = 1 / inm[i];  /* adaptation */
          }
          UTIL[i] = LERP(UTIL[i], yv);
        }
      }
      for (int64_t i = 0; i < h; i++)
        key[i] = !(AGE[i] > maturity) ? INFINITY : util_type == 6 ? u[1 + i] : UTIL[i] / corr[i];
      int64_t grown = 0;
      for (int64_t i = 0; i < h; i++) grown += AGE[i] > maturity;
      const double mature = (double)grown;
      double r;
      if (!bernoulli) {
        seen[k] += mature;
        r = floor(seen[k] * rate) - replaced[k];
      } else {
        const double kk = mature * rate;
        r = kk >= 1 ? floor(kk) : ((double)u[0] < kk ? 1.0 : 0.0);
      }
      if (r > max_r) r = (double)max_r;
      replaced[k] += r;
      if (r <= 0) continue;
      /* the r smallest keys, ties to the lower index, NaN after +inf (a stable sort) */
      for (int64_t i = 0; i < h; i++) chosen[i] = 0;
      for (int64_t j = 0; j < (int64_t)r; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < h; i++) {
          if (chosen[i]) continue;
          if (best < 0 || key[i] < key[best] || (key[best] != key[best] && key[i] == key[i]))
            best = i;
        }
        chosen[best] = 1;
        picked[j] = best;
      }
      for (int64_t j = 0; j < (int64_t)r; j++) {
        const int64_t i = picked[j];
        const T *row = u + offset + (max_r > 1 ? j : 0) * d;
        for (int64_t c = 0; c < d; c++) W[c * h + i] = (row[c] * (T)2 - (T)1) * bound;
        B1[i] = 0;
      }
      if (bias_correction) {
        T shift = 0;
        for (int64_t i = 0; i < h; i++)
          if (chosen[i]) shift += W2[i] * (MEAN[i] / corr[i]);
        B2[0] += shift;
      }
      for (int64_t i = 0; i < h; i++)
        if (chosen[i]) { W2[i] = 0; UTIL[i] = 0; MEAN[i] = 0; AGE[i] = 0; }
    }
  }
  free(z); free(a); free(gz); free(corr); free(key); free(inm); free(chosen); free(picked);
}
#undef LERP
"""

_TYPES = (("bitflip_f32", "float", "powf", "fabsf"), ("bitflip_f64", "double", "pow", "fabs"))
SOURCE = (
    "#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n#define LANES 16\n"
    + "".join(
        f"#define NAME {name}\n#define T {c}\n#define POW {pw}\n#define ABS {ab}\n{_TEMPLATE}"
        "#undef NAME\n#undef T\n#undef POW\n#undef ABS\n"
        for name, c, pw, ab in _TYPES
    )
)

_LIBRARY: ctypes.CDLL | None = None


def check_compiler() -> str:
    """The C compiler the loop is built with (`$CC`, else `cc`); ValueError when it is not on
    PATH, so that `engine=native` is refused before any work starts."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise ValueError(
            f"engine=native compiles a C loop and needs a C compiler: {compiler!r} is not on PATH "
            "(install one or set CC=...); engine=batched and engine=eager need none"
        )
    return compiler


def _compile() -> ctypes.CDLL:
    compiler = check_compiler()
    flags = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared", "-std=c99"]
    tag = hashlib.sha256(
        "\0".join([SOURCE, compiler, *flags, platform.machine(), platform.node()]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lop-bitflip"
    library = cache / f"bitflip-{tag}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source = Path(tmp) / "bitflip.c"
            source.write_text(SOURCE)
            built = Path(tmp) / "bitflip.so"
            out = subprocess.run(
                [compiler, *flags, "-o", str(built), str(source), "-lm"],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                raise RuntimeError(f"engine=native: {compiler} failed:\n{out.stderr}")
            os.replace(built, library)  # atomic: concurrent trials may compile at once
    return ctypes.CDLL(str(library))


def library() -> ctypes.CDLL:
    """The compiled loop (compiled on first use, cached per machine)."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _compile()
    return _LIBRARY


@functools.cache
def decay_powers(decay: float, dtype: torch.dtype) -> torch.Tensor:
    """decay**a for the ages a = 0, 1, ... until it underflows to 0 (at most 2**20 of them; the
    loop computes older ages' powers itself): CBP's bias correction 1 - decay**age as
    `CBPState.observe` computes it (torch.pow), without a pow per unit and step."""
    tiny = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the least subnormal
    ages = 2 if decay == 0 else math.ceil(math.log(tiny) / math.log(decay)) + 2
    return torch.pow(decay, torch.arange(min(ages, 2**20), dtype=dtype))


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("engine=native needs contiguous CPU tensors")
    return ctypes.c_void_p(tensor.data_ptr())


def run_steps(
    start: int,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: torch.Tensor,
    w1t: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    neg2lr: torch.Tensor,
    cbp_start: torch.Tensor,
    draws: torch.Tensor,
    cbp,
    bias_correction: bool,
    bound: float,
) -> None:
    """Steps start .. start + L - 1 of every member on x (L, n, d), y (L, n), in place; the
    losses written to loss (L, n) (the other shapes: the C source's comment; `cbp` the members'
    `core.optim.CBPState`). The inputs are copied member-major first: the loop reads each
    member's chunk in order (steps L apart in memory would cost a cache and TLB miss each)."""
    powers = decay_powers(cbp.decay, w1t.dtype)
    n, d, h = w1t.shape
    steps = x.shape[0]
    x, y = x.transpose(0, 1).contiguous(), y.t().contiguous()
    member_loss = torch.empty(n, steps, dtype=loss.dtype)
    function = library().bitflip_f32 if w1t.dtype == torch.float32 else library().bitflip_f64
    i64, f64 = ctypes.c_int64, ctypes.c_double
    function(
        i64(n),
        i64(steps),
        i64(d),
        i64(h),
        i64(start),
        *map(_pointer, (x, y, member_loss, w1t, b1, w2, b2, neg2lr, cbp_start, draws)),
        i64(draws.shape[2]),
        *map(_pointer, (cbp.age, cbp.util, cbp.mean, cbp.mature_seen, cbp.replaced)),
        f64(cbp.rate),
        f64(cbp.decay),
        f64(cbp.maturity),
        i64(UTIL_CODES[cbp.util_type]),
        i64(ROUNDING_CODES[cbp.rounding]),
        i64(int(bias_correction)),
        i64(cbp.max_r),
        f64(bound),
        _pointer(powers),
        i64(len(powers)),
    )
    loss.copy_(member_loss.t())
