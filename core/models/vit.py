"""Vision Transformer (paper §B.1.3): patch embedding + CLS + learned positions, pre-norm
blocks (x += Attn(Norm x); x += MLP(Norm x)), final norm, linear head on the CLS token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.blocks import Layer, make_activation, make_norm
from core.models.config import ModelConfig


class Attention(nn.Module):
    """Multi-head self-attention; the qkv output is laid out [q | k | v], each heads x head_dim.

    Attention dropout (p = `cfg.attn_dropout`, train mode only) zeroes attention weights. In a
    clone (`cfg.clone_factor` E > 1) heads h*E .. h*E + E - 1 copy one base head, and by default
    the copies share one dropout mask, so attention dropout keeps the clone on the cloning
    manifold (as one widened head with one mask would); `cfg.independent_head_masks` gives every
    head its own mask (what a fused attention kernel draws), which breaks the symmetry.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.attn_dropout = cfg.attn_dropout
        self.mask_group = 1 if cfg.independent_head_masks else cfg.clone_factor
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        p = self.attn_dropout if self.training else 0.0
        if p == 0.0:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, hd), scale hd^-1/2
        else:
            weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # (B,H,T,T)
            groups = self.n_heads // self.mask_group
            keep = torch.empty(b, groups, t, t, dtype=weights.dtype, device=weights.device)
            keep = keep.bernoulli_(1.0 - p).repeat_interleave(self.mask_group, dim=1)  # (B,H,T,T)
            out = (weights * keep / (1.0 - p)) @ v  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, H*hd)
        return self.drop(self.proj(out))


class FeedForward(nn.Module):
    """fc1 -> Act -> Dropout -> fc2 -> Dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, hidden = cfg.embed_dim, cfg.embed_dim * cfg.mlp_ratio
        self.fc1 = nn.Linear(d, hidden)
        self.act = make_activation(cfg.activation)
        self.drop1 = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden, d)
        self.drop2 = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.embed_dim, "tokens")
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg.norm, cfg.embed_dim, "tokens")
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.in_shape
        p, d = cfg.patch_size, cfg.embed_dim
        n_tokens = (h // p) * (w // p) + 1
        self.patch_embed = nn.Conv2d(c, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, d))
        self.pos_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.norm = make_norm(cfg.norm, d, "tokens")
        self.head = nn.Linear(d, cfg.num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N+1, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])  # CLS token -> (B, classes)

    def declared_layers(self) -> list[Layer]:
        """Per block: `mlp<i>` (the MLP's hidden units) and `block<i>` (its output tokens)."""
        layers = []
        for i, block in enumerate(self.blocks):
            layers.append(
                Layer(
                    name=f"mlp{i + 1}",
                    module=block.mlp.act,
                    incoming=block.mlp.fc1,
                    outgoing=block.mlp.fc2,
                    activation=self.cfg.activation,
                )
            )
            layers.append(Layer(name=f"block{i + 1}", module=block))
        return layers
