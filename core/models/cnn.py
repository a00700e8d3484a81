"""Convolutional network (paper §B.1.3):
[Conv3x3 -> Norm -> Act -> MaxPool2] x stages -> Flatten -> [Linear -> Act -> Dropout] x n
-> Linear.
Dropout sits only in the fully connected part, as in the paper's code."""

from __future__ import annotations

import torch
from torch import nn

from core.models.blocks import CloneAwareFlatten, Layer, make_activation, make_norm
from core.models.config import ModelConfig


class ConvStage(nn.Module):
    """Conv3x3 -> Norm -> Act -> MaxPool(2) (or Conv -> Act -> Norm -> MaxPool)."""

    def __init__(self, c_in: int, c_out: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1)
        self.norm = make_norm(cfg.norm, c_out, "conv")
        self.act = make_activation(cfg.activation)
        self.pool = nn.MaxPool2d(2, 2)
        self.norm_after_activation = cfg.norm_after_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.norm(self.act(x)) if self.norm_after_activation else self.act(self.norm(x))
        return self.pool(x)


class FCBlock(nn.Module):
    """Linear -> Act -> Dropout."""

    def __init__(self, d_in: int, d_out: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.act = make_activation(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.linear(x)))


class CNN(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.in_shape
        chans = (c, *cfg.conv_channels)
        self.stages = nn.ModuleList(ConvStage(a, b, cfg) for a, b in zip(chans, chans[1:]))
        for _ in cfg.conv_channels:
            h, w = h // 2, w // 2
        if h == 0 or w == 0:
            raise ValueError(
                f"{len(cfg.conv_channels)} pooling stages shrink {cfg.in_shape} to nothing"
            )
        self.positions = h * w  # spatial positions per channel after the last stage
        self.flatten = CloneAwareFlatten(cfg.clone_factor)
        widths = (chans[-1] * self.positions, *cfg.fc_hidden)
        self.fc = nn.ModuleList(FCBlock(a, b, cfg) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)  # (B, C, H, W) -> (B, C', H/2, W/2)
        x = self.flatten(x)  # (B, C * H * W)
        for block in self.fc:
            x = block(x)
        return self.head(x)

    def _flatten_index(self) -> torch.Tensor:
        """(C, H*W): the flattened feature index of every (channel, position) pair."""
        c, e, p = self.cfg.conv_channels[-1], self.cfg.clone_factor, self.positions
        ch = torch.arange(c)
        pos = torch.arange(p)
        return ((ch // e)[:, None] * p + pos[None, :]) * e + (ch % e)[:, None]

    def declared_layers(self) -> list[Layer]:
        """`conv1`... (channels of each stage's activation, before pooling), then `fc1`...; each
        layer is read by the next one's Linear/Conv (the head after the last)."""
        units = [(f"conv{i + 1}", s.act, s.conv, s.norm) for i, s in enumerate(self.stages)]
        units += [(f"fc{i + 1}", b.act, b.linear, None) for i, b in enumerate(self.fc)]
        readers = [incoming for _, _, incoming, _ in units[1:]] + [self.head]
        last_conv = len(self.stages) - 1  # read through the flatten
        return [
            Layer(
                name,
                act,
                incoming,
                norm=None if isinstance(norm, nn.Identity) else norm,
                outgoing=reader,
                outgoing_index=self._flatten_index() if i == last_conv else None,
                activation=self.cfg.activation,
            )
            for i, ((name, act, incoming, norm), reader) in enumerate(zip(units, readers))
        ]
