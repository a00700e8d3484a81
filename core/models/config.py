"""The model configuration shared by every architecture, with the paper's defaults.

`ModelConfig(arch=..., in_shape=(C, H, W), num_classes=K)` is enough: every other field left at
`None` is filled in `__post_init__` from `ARCH_DEFAULTS` (the paper's code; paper §B), so after
construction each field holds the value actually used. The ViT's attention dropout follows
`dropout` unless set: `ModelConfig(arch="vit", dropout=0.0)` has no active dropout of any kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ARCHS = ("mlp", "cnn", "resnet", "vit", "bitflip")
MODEL_ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "gelu",
    "elu",
    "selu",
    "swish",  # SiLU, x * sigmoid(x) (Dohare et al.'s bit-flip learners)
    "identity",
)
NORMS = ("batch", "layer", "none")

# The paper code's defaults per architecture (its model configs; bit-flip learner: paper §B.1).
ARCH_DEFAULTS: dict[str, dict[str, object]] = {
    "mlp": {"activation": "relu", "norm": "batch", "dropout": 0.2, "hidden_sizes": (128,) * 5},
    "cnn": {
        "activation": "relu",
        "norm": "batch",
        "dropout": 0.1,
        "conv_channels": (64, 128, 256),
        "fc_hidden": (512,),
    },
    "resnet": {
        "activation": "relu",
        "norm": "batch",
        "dropout": 0.1,
        "base_channels": 64,
        "stage_blocks": (2, 2, 2, 2),
    },
    "vit": {
        "activation": "gelu",
        "norm": "layer",
        "dropout": 0.1,
        "attn_dropout": None,  # None: the same as dropout (0.1 at the paper's default)
        "patch_size": 8,
        "embed_dim": 384,
        "depth": 6,
        "n_heads": 6,
        "mlp_ratio": 4,
    },
    "bitflip": {"activation": "relu", "norm": "none", "dropout": 0.0, "hidden_sizes": (5,)},
}

# Fields that only some architectures have; setting one for another arch is an error.
ARCH_SPECIFIC = (
    "attn_dropout",
    "hidden_sizes",
    "conv_channels",
    "fc_hidden",
    "base_channels",
    "stage_blocks",
    "patch_size",
    "embed_dim",
    "depth",
    "n_heads",
    "mlp_ratio",
)

# Fields that scale with the width expansion of `core.cloning.expand`.
WIDTH_FIELDS = (
    "hidden_sizes",
    "conv_channels",
    "fc_hidden",
    "base_channels",
    "embed_dim",
    "n_heads",
)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build one model; `None` means "the paper's default for `arch`"."""

    arch: str  # one of ARCHS
    in_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for vectors (bit-flip: (21,))
    num_classes: int  # output units (1 for the bit-flip regression)
    activation: str | None = None  # one of MODEL_ACTIVATIONS
    norm: str | None = None  # batch | layer (LayerNorm, GroupNorm(1, C) for conv maps) | none
    norm_after_activation: bool = False  # Linear -> Act -> Norm instead of Linear -> Norm -> Act
    dropout: float | None = None  # MLP: every block; CNN: FC part; ResNet: before head; ViT: all
    attn_dropout: float | None = None  # ViT: dropout on the attention weights (None: = dropout)
    independent_head_masks: bool = False  # ViT: each copy of a cloned head draws its own mask
    hidden_sizes: tuple[int, ...] | None = None  # MLP / bit-flip learner hidden widths
    conv_channels: tuple[int, ...] | None = (
        None  # CNN conv stage widths (each: conv, norm, act, pool)
    )
    fc_hidden: tuple[int, ...] | None = None  # CNN fully connected hidden widths
    base_channels: int | None = None  # ResNet stage-0 channels (stage s has base * 2**s)
    stage_blocks: tuple[int, ...] | None = None  # ResNet BasicBlocks per stage
    patch_size: int | None = None  # ViT patch side
    embed_dim: int | None = None  # ViT residual width
    depth: int | None = None  # ViT blocks
    n_heads: int | None = None  # ViT heads (head width = embed_dim / n_heads)
    mlp_ratio: int | None = None  # ViT MLP hidden = mlp_ratio * embed_dim
    qkv_bias: bool = True  # ViT bias on the qkv projection
    clone_factor: int = 1  # total width factor of `core.cloning.expand` applied to reach this model

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        own = set(ARCH_DEFAULTS[self.arch])
        foreign = [k for k in ARCH_SPECIFIC if k not in own and getattr(self, k) is not None]
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do not apply to arch {self.arch!r}")
        for key, value in ARCH_DEFAULTS[self.arch].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key in ("hidden_sizes", "conv_channels", "fc_hidden", "stage_blocks", "in_shape"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(int(v) for v in value))
        if self.activation not in MODEL_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(MODEL_ACTIVATIONS)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.dropout is None:
            object.__setattr__(self, "dropout", 0.0)
        if self.arch == "vit" and self.attn_dropout is None:
            object.__setattr__(self, "attn_dropout", self.dropout)
        if self.independent_head_masks and self.arch != "vit":
            raise ValueError(f"independent_head_masks does not apply to arch {self.arch!r}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= (self.attn_dropout or 0.0) < 1.0:
            raise ValueError("dropout probabilities must lie in [0, 1)")
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if self.clone_factor < 1:
            raise ValueError("clone_factor must be >= 1")
        image_arch = self.arch in ("cnn", "resnet", "vit")
        if image_arch and len(self.in_shape) != 3:
            raise ValueError(f"{self.arch} needs in_shape=(C, H, W), got {self.in_shape}")
        if self.arch == "vit":
            if self.embed_dim % self.n_heads:
                raise ValueError(
                    f"embed_dim={self.embed_dim} is not divisible by n_heads={self.n_heads}"
                )
            if min(self.in_shape[1:]) < self.patch_size:
                raise ValueError(f"patch_size={self.patch_size} exceeds the image {self.in_shape}")

    @property
    def head_dim(self) -> int:
        """ViT attention head width."""
        return self.embed_dim // self.n_heads

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly dict from which `ModelConfig(**d)` rebuilds this config."""
        return dataclasses.asdict(self)

    def widened(self, factor: int) -> ModelConfig:
        """The same architecture with every width multiplied by `factor` (input/output untouched).

        ViT heads are duplicated (n_heads * factor, head width unchanged) so attention stays exact.
        """
        if factor < 1:
            raise ValueError("factor must be >= 1")
        changes: dict[str, object] = {"clone_factor": self.clone_factor * factor}
        for key in WIDTH_FIELDS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, tuple):
                changes[key] = tuple(v * factor for v in value)
            else:
                changes[key] = value * factor
        return dataclasses.replace(self, **changes)

    def root(self) -> ModelConfig:
        """The base architecture this config was expanded from (`clone_factor == 1`)."""
        f = self.clone_factor
        if f == 1:
            return self
        changes: dict[str, object] = {"clone_factor": 1}
        for key in WIDTH_FIELDS:
            value = getattr(self, key)
            if value is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if any(v % f for v in values):
                raise ValueError(f"{key}={value} is not divisible by clone_factor={f}")
            changes[key] = tuple(v // f for v in values) if isinstance(value, tuple) else value // f
        return dataclasses.replace(self, **changes)
