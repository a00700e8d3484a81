"""The bit-flipping learners (paper §B.1.1): input -> h hidden units -> 1 output (regression), or
the linear baseline input -> 1 (`hidden_sizes=()`, Dohare et al.'s `linear` agent)."""

from __future__ import annotations

import math

import torch
from torch import nn

from core.models.blocks import Layer, activation_gain, make_activation
from core.models.config import ModelConfig


class BitFlipLearner(nn.Module):
    """fc1 -> activation module -> fc2, or one linear layer `fc` with `hidden_sizes=()`.

    Init as Dohare et al. (2024): fc1 ~ U(+-g sqrt(3 / fan_in)) with the activation's gain g,
    fc2 ~ U(+-sqrt(3 / h)), biases 0; the linear learner fc ~ U(+-sqrt(3 / fan_in)), bias 0.
    fan_in is the input size: m + 1 with the constant bias bit, m = 20 without (Dohare's). The
    activation is a module, so the probe measures post-activations (the paper's script measured
    fc1's pre-activations).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if len(cfg.hidden_sizes) > 1:
            raise ValueError(
                f"the bit-flip learner has one hidden layer or none, got {cfg.hidden_sizes}"
            )
        if len(cfg.in_shape) != 1:
            raise ValueError(
                f"the bit-flip learner takes vectors, in_shape=(D,), got {cfg.in_shape}"
            )
        if cfg.norm != "none" or cfg.dropout > 0:
            raise ValueError(
                "the bit-flip learner has no norm and no dropout (norm='none', dropout=0)"
            )
        self.cfg = cfg
        (d_in,) = cfg.in_shape
        if not cfg.hidden_sizes:
            self.fc = nn.Linear(d_in, cfg.num_classes)
            bound = math.sqrt(3.0 / d_in)
            with torch.no_grad():
                self.fc.weight.uniform_(-bound, bound)
                self.fc.bias.zero_()
            return
        (h,) = cfg.hidden_sizes
        self.fc1 = nn.Linear(d_in, h)
        self.act = make_activation(cfg.activation)
        self.fc2 = nn.Linear(h, cfg.num_classes)
        bound1 = activation_gain(cfg.activation) * math.sqrt(3.0 / d_in)
        bound2 = math.sqrt(3.0 / h)
        with torch.no_grad():
            self.fc1.weight.uniform_(-bound1, bound1)
            self.fc2.weight.uniform_(-bound2, bound2)
            self.fc1.bias.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.hidden_sizes:
            return self.fc(x)
        return self.fc2(self.act(self.fc1(x)))

    def declared_layers(self) -> list[Layer]:
        """`hidden` (the hidden units; none for the linear learner)."""
        if not self.cfg.hidden_sizes:
            return []
        return [
            Layer(
                name="hidden",
                module=self.act,
                incoming=self.fc1,
                outgoing=self.fc2,
                activation=self.cfg.activation,
            )
        ]
