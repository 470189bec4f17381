"""A small Swin Transformer stage for 28x28 digits: two Swin blocks, a student small enough to distil into.

patch embedding (patch p: 28x28 -> (28/p)^2 tokens) -> `depth` Swin blocks alternating regular and
shifted windows (shift = window // 2) -> PatchMerging (2x2 neighbours: half the grid, twice the
width) -> LayerNorm. The blocks and the merge are torchvision's SwinTransformerBlock / PatchMerging
(relative position bias, cyclic shift with the attention mask), configured for this grid.

Same surface as the ViT: forward_features(x) -> (B, N, D) tokens, pool -> (B, D) mean,
num_prefix = 0, embed_dim = 2 * model.embed_dim (after the merge).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torchvision.models.swin_transformer import PatchMerging, SwinTransformerBlock

from vitssl.models.encoder import Encoder
from vitssl.models.layers import TransformerOptions, init_weights
from vitssl.models.registry import register_encoder


class SwinOptions(TransformerOptions):
    """`model:` for arch swin (the defaults: 14x14 tokens of 2x2 pixels, two 7x7 windows per side)."""

    arch: Literal["swin"] = "swin"
    patch_size: int = Field(2, gt=0)
    embed_dim: int = Field(48, gt=0, description="before the merge; the embedding is twice this")
    depth: int = Field(2, ge=1)
    num_heads: int = Field(3, ge=1)
    swin_window: int = Field(7, ge=1, description="attention window (tokens per side)")

    def check_data(self, image_size: int, channels: int) -> None:
        super().check_data(image_size, channels)
        grid = image_size // self.patch_size
        if self.swin_window > grid:
            raise ValueError(f"model.swin_window ({self.swin_window}) must be at most the token grid {grid} "
                             f"(data.image_size {image_size} / model.patch_size {self.patch_size})")


@register_encoder(SwinOptions)
class Swin(Encoder):
    def __init__(self, options: SwinOptions | None = None, image_size: int = 28, channels: int = 1):
        o = options or SwinOptions()
        super().__init__(o, image_size, channels)
        d, w = o.embed_dim, o.swin_window
        self.grid = image_size // o.patch_size
        self.patch_embed = nn.Conv2d(channels, d, kernel_size=o.patch_size, stride=o.patch_size)
        self.embed_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(d, o.num_heads, window_size=[w, w], shift_size=[0, 0] if i % 2 == 0 else [w // 2] * 2,
                                 mlp_ratio=o.mlp_ratio, dropout=o.dropout, attention_dropout=o.attn_dropout)
            for i in range(o.depth))
        self.merge = PatchMerging(d)
        self.norm = nn.LayerNorm(2 * d)
        self.apply(init_weights)

    @property
    def embed_dim(self) -> int:
        return 2 * self.options.embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, 2D) with N = ceil(grid / 2)^2 tokens after the merge."""
        tokens = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, g, g, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(self.merge(tokens)).flatten(1, 2)

    def no_weight_decay(self) -> set[str]:
        return {f"blocks.{i}.attn.relative_position_bias_table" for i in range(self.options.depth)}
