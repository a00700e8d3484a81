"""Where a `core.run.specs.PrecisionSpec` (`precision.*`) takes effect: the one place that applies
the precision and kernel options of the image experiments (docs/precision.md).

- `check(spec, device)`: ValueError for an option the device cannot honour, before any work.
- `precision_scope(spec, device)`: around the whole run, the CUDA TF32 flags of `spec.matmul`
  (cuBLAS matmuls and cuDNN convolutions), restored on exit. `highest` turns TF32 off for both;
  torch's own default runs cuDNN convolutions in TF32.
- `training_forward(model, spec, device)`: the callable the training loop calls instead of
  `model`: the model's 4-D tensors in channels-last format (done in place, so the optimizer,
  checkpoints and probes keep working on the same parameters), its forward through
  `torch.compile` and under bf16 autocast, 4-D inputs made channels-last, float32 logits out. With
  the defaults it is `model` itself. Evaluation, probes and clone checks call the eager `model`
  (full precision, no autocast); the TF32 flags, being process-wide, reach them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from core.run.specs import PrecisionSpec

# compute capability of the first GPUs with TF32 and native bf16 tensor cores (Ampere)
_AMPERE = (8, 0)


def check(spec: PrecisionSpec, device: torch.device) -> None:
    """ValueError naming the option when `device` cannot run `spec` as asked.

    TF32 is an NVIDIA tensor-core format: on a CPU, or a GPU older than Ampere, the flag would be
    silently ignored and a record saying `matmul=tf32` would hold fp32 results, so it is refused.
    bf16 autocast runs on the CPU and on Ampere or newer GPUs; elsewhere it is refused.
    """
    if spec.matmul == "tf32" and not _ampere(device):
        raise ValueError(
            f"precision.matmul='tf32' needs a CUDA GPU of compute capability >= 8.0 (Ampere), "
            f"not {_describe(device)}; valid there: highest"
        )
    if spec.autocast == "bf16" and device.type != "cpu" and not _ampere(device):
        raise ValueError(
            f"precision.autocast='bf16' needs the CPU or a CUDA GPU of compute capability >= 8.0, "
            f"not {_describe(device)}; valid there: none"
        )


def _ampere(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= _AMPERE


def _describe(device: torch.device) -> str:
    if device.type != "cuda":
        return f"device {device}"
    major, minor = torch.cuda.get_device_capability(device)
    return f"device {device} (compute capability {major}.{minor})"


@contextmanager
def precision_scope(spec: PrecisionSpec, device: torch.device) -> Iterator[None]:
    """`check(spec, device)`, then the TF32 flags of `spec.matmul` until the block exits.

    The flags are process-wide: two runs with different settings must not share a process at the
    same time. Uses torch's `allow_tf32` flags; do not set torch's newer `fp32_precision`
    attributes in the same process (torch refuses a mix of the two).
    """
    check(spec, device)
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = spec.matmul == "tf32"
    try:
        yield
    finally:
        for f, value in zip(flags, saved, strict=True):
            f.allow_tf32 = value


def training_forward(
    model: nn.Module, spec: PrecisionSpec, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the training loop calls for `model`'s logits under `spec` (see the module doc).

    Channels-last changes only 4-D tensors (convolution kernels; for an MLP it is a no-op on the
    weights and a reordering copy of each input batch). `torch.compile` returns a wrapper sharing
    `model`'s parameters and buffers; `model` itself stays eager. Under autocast the logits are
    cast back to float32, so the loss is computed in float32 as autocast would.
    """
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    module = torch.compile(model) if spec.compile else model
    if not spec.channels_last and spec.autocast == "none":
        return module

    def forward(x: torch.Tensor) -> torch.Tensor:
        if spec.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if spec.autocast == "none":
            return module(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return module(x).float()

    return forward
