"""Multi-layer perceptron (paper §B.1.3):
Flatten -> [Linear -> Norm -> Act -> Dropout] x n -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from core.models.blocks import Layer, make_activation, make_norm
from core.models.config import ModelConfig


class MLPBlock(nn.Module):
    """Linear -> Norm -> Act -> Dropout (or Linear -> Act -> Norm -> Dropout)."""

    def __init__(self, d_in: int, d_out: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = make_norm(cfg.norm, d_out, "vector")
        self.act = make_activation(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.norm_after_activation = cfg.norm_after_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.norm_after_activation:
            x = self.norm(self.act(x))
        else:
            x = self.act(self.norm(x))
        return self.drop(x)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_in = 1
        for d in cfg.in_shape:
            d_in *= d
        widths = (d_in, *cfg.hidden_sizes)
        self.flatten = nn.Flatten()
        self.blocks = nn.ModuleList(MLPBlock(a, b, cfg) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (B, *in_shape) -> (B, D)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def declared_layers(self) -> list[Layer]:
        """The post-activation output of each hidden block, `hidden1` ... `hiddenN`."""
        nexts = [b.linear for b in self.blocks[1:]] + [self.head]
        return [
            Layer(
                name=f"hidden{i + 1}",
                module=block.act,
                incoming=block.linear,
                norm=None if isinstance(block.norm, nn.Identity) else block.norm,
                outgoing=nxt,
                activation=self.cfg.activation,
            )
            for i, (block, nxt) in enumerate(zip(self.blocks, nexts))
        ]
