"""ResNet-18, CIFAR style (paper §B.1.3): Conv3x3 stem (no max-pool) -> 4 stages of BasicBlocks
(channels base * 2**s, stride 1 then 2) -> global average pool -> Dropout -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from core.models.blocks import Layer, make_activation, make_norm
from core.models.config import ModelConfig


class BasicBlock(nn.Module):
    """out = Act(Norm2(Conv2(Act(Norm1(Conv1 x)))) + shortcut(x)).

    With `norm_after_activation`: out = Norm2(Act(Conv2(Norm1(Act(Conv1 x))) + shortcut(x))).
    Each activation is its own module so that hooks see one call each.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, cfg: ModelConfig) -> None:
        super().__init__()
        bias = cfg.norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(cfg.norm, c_out, "conv")
        self.act1 = make_activation(cfg.activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.norm2 = make_norm(cfg.norm, c_out, "conv")
        self.act2 = make_activation(cfg.activation)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                make_norm(cfg.norm, c_out, "conv"),
            )
        else:
            self.shortcut = nn.Identity()
        self.norm_after_activation = cfg.norm_after_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_after_activation:
            out = self.norm1(self.act1(self.conv1(x)))
            return self.norm2(self.act2(self.conv2(out) + self.shortcut(x)))
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.base_channels
        bias = cfg.norm == "none"
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_shape[0], c, 3, stride=1, padding=1, bias=bias),
            make_norm(cfg.norm, c, "conv"),
            make_activation(cfg.activation),
        )
        blocks = []
        c_in = c
        for s, n in enumerate(cfg.stage_blocks):
            c_out = c * 2**s
            for b in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if (s > 0 and b == 0) else 1, cfg))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Linear(c_in, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.pool(x).flatten(1)  # (B, C, H, W) -> (B, C)
        return self.head(self.drop(x))

    def declared_layers(self) -> list[Layer]:
        """Per BasicBlock i: `inner<i>`, the block's hidden channels (conv1 -> norm1 -> act1,
        read by conv2; units CBP can replace, norm1 reset with them), then `block<i>`, the
        block's output (measured, not re-initialised: the shortcut also feeds it)."""
        layers = []
        for i, b in enumerate(self.blocks):
            layers.append(
                Layer(
                    name=f"inner{i + 1}",
                    module=b.act1,
                    incoming=b.conv1,
                    norm=None if isinstance(b.norm1, nn.Identity) else b.norm1,
                    outgoing=b.conv2,
                    activation=self.cfg.activation,
                )
            )
            layers.append(Layer(name=f"block{i + 1}", module=b))
        return layers
