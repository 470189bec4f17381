"""A small Swin Transformer stage for 28x28 digits: the seed's "2 Swin blocks" student.

patch embedding (patch p: 28x28 -> (28/p)^2 tokens) -> `depth` Swin blocks alternating regular and
shifted windows (shift = window // 2) -> PatchMerging (2x2 neighbours: half the grid, twice the
width) -> LayerNorm. The blocks and the merge are torchvision's SwinTransformerBlock / PatchMerging
(relative position bias, cyclic shift with the attention mask), configured for this grid.

Same surface as the ViT: forward_features(x) -> (B, N, D) tokens, pool -> (B, D) mean,
num_prefix = 0, embed_dim = 2 * args.embed_dim (after the merge).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.swin_transformer import PatchMerging, SwinTransformerBlock

from vitssl.models.layers import init_weights
from vitssl.models.registry import register_encoder


@dataclass
class SwinArgs:
    """Plain constructor arguments: what checkpoints store to rebuild the encoder."""

    img_size: int = 28
    in_chans: int = 1
    patch_size: int = 2
    embed_dim: int = 48
    depth: int = 2
    num_heads: int = 3
    window_size: int = 7
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@register_encoder("swin", SwinArgs, own_keys=("swin_window",))
class Swin(nn.Module):
    def __init__(self, args: SwinArgs):
        super().__init__()
        grid = args.img_size // args.patch_size
        if args.img_size % args.patch_size or args.window_size > grid:
            raise ValueError(f"swin: image {args.img_size} must be divisible by model.patch_size "
                             f"{args.patch_size}, and model.swin_window {args.window_size} at most the "
                             f"token grid {grid}")
        self.args = args
        d, w = args.embed_dim, args.window_size
        self.grid = grid
        self.patch_embed = nn.Conv2d(args.in_chans, d, kernel_size=args.patch_size, stride=args.patch_size)
        self.embed_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(d, args.num_heads, window_size=[w, w], shift_size=[0, 0] if i % 2 == 0 else [w // 2] * 2,
                                 mlp_ratio=args.mlp_ratio, dropout=args.dropout,
                                 attention_dropout=args.attn_dropout)
            for i in range(args.depth))
        self.merge = PatchMerging(d)
        self.norm = nn.LayerNorm(2 * d)
        self.num_prefix = 0
        self.apply(init_weights)

    @property
    def embed_dim(self) -> int:
        return 2 * self.args.embed_dim

    @staticmethod
    def args_from_config(model, data) -> SwinArgs:
        if model.embed_dim % model.num_heads:
            raise ValueError(f"model.embed_dim ({model.embed_dim}) must be divisible by model.num_heads "
                             f"({model.num_heads})")
        if data.image_size % model.patch_size:
            raise ValueError(f"data.image_size ({data.image_size}) must be divisible by model.patch_size "
                             f"({model.patch_size})")
        return SwinArgs(img_size=data.image_size, in_chans=data.channels, patch_size=model.patch_size,
                        embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads,
                        window_size=model.swin_window, mlp_ratio=model.mlp_ratio, dropout=model.dropout,
                        attn_dropout=model.attn_dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, 2D) with N = ceil(grid / 2)^2 tokens after the merge."""
        tokens = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, g, g, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(self.merge(tokens)).flatten(1, 2)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): mean of the tokens."""
        return features.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> pooled embedding (B, 2 * embed_dim)."""
        return self.pool(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        return {f"blocks.{i}.attn.relative_position_bias_table" for i in range(self.args.depth)}
