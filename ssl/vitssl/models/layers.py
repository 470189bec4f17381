"""Shared transformer building blocks: patch embeddings, position embeddings, attention, MLP, block,
and the options (with their shape rules) every transformer encoder shares."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torchvision.ops import StochasticDepth

from vitssl.models.encoder import EncoderOptions


class PatchEmbed(nn.Module):
    """Image or clip -> patch tokens.

    2-D: x (B, C, H, W) -> (B, N, D) with N = (H/p)(W/p).
    3-D tubelets (frames > 1): x (B, C, T, H, W) -> (B, N, D) with N = (T/t)(H/p)(W/p).
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int,
                 frames: int = 1, tubelet: int = 1):
        super().__init__()
        self.video = frames > 1
        self.grid = (frames // tubelet, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        if self.video:
            k = (tubelet, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def check_heads(dim: int, num_heads: int, dim_key: str = "embed_dim", heads_key: str = "num_heads") -> None:
    """Attention splits the width evenly over the heads (ValueError naming the keys)."""
    if dim % num_heads:
        raise ValueError(f"{dim_key} ({dim}) must be divisible by {heads_key} ({num_heads})")


def check_sincos_dim(dim: int, frames: int, dim_key: str = "embed_dim") -> None:
    """Fixed sin-cos positions split the width into sin/cos pairs per axis: 2 axes for images, 3 for
    clips (where a quarter of the width encodes time), so the width must divide by 4, or by 8."""
    need = 4 if frames == 1 else 8
    if dim % need:
        raise ValueError(f"{dim_key} ({dim}) must be divisible by {need} for {2 if frames == 1 else 3}-D "
                         f"sin-cos positions")


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.double().flatten()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Fixed sin-cos position embedding over a (T, H, W) grid -> (T*H*W, dim).

    With T == 1 this is MAE's 2-D embedding (half the channels for rows, half for columns);
    with T > 1 a quarter of the channels encodes time, as in VideoMAE-style space-time grids.
    """
    t, h, w = grid
    check_sincos_dim(dim, t)
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    if t == 1:
        emb = torch.cat([_sincos_1d(dim // 2, hh), _sincos_1d(dim // 2, ww)], dim=1)
    else:
        d_t = dim // 4
        d_s = (dim - d_t) // 2
        emb = torch.cat([_sincos_1d(d_t, tt), _sincos_1d(d_s, hh), _sincos_1d(dim - d_t - d_s, ww)], dim=1)
    return emb.float()


class Attention(nn.Module):
    """Multi-head self-attention on F.scaled_dot_product_attention. x: (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); in training each
    residual branch is dropped per sample with probability `drop_path.p` (stochastic depth)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = StochasticDepth(0.0, "row")  # a fine-tuning regulariser, off unless set

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """MAE/timm-style init: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        # As in MAE: treat the patch projection like a linear layer.
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)




class TransformerOptions(EncoderOptions):
    """The options every patch-token transformer encoder has, and the rules between them."""

    patch_size: int = Field(7, gt=0)
    embed_dim: int = Field(64, gt=0)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)

    run_options: ClassVar[frozenset[str]] = EncoderOptions.run_options | {"dropout", "attn_dropout"}

    @model_validator(mode="after")
    def _heads(self):
        check_heads(self.embed_dim, self.num_heads, "model.embed_dim", "model.num_heads")
        return self

    def check_data(self, image_size: int, channels: int) -> None:
        if image_size % self.patch_size:
            raise ValueError(f"data.image_size ({image_size}) must be divisible by model.patch_size "
                             f"({self.patch_size})")

__all__ = ["PatchEmbed", "check_heads", "check_sincos_dim", "sincos_pos_embed", "Attention", "Mlp", "Block", "init_weights", "trunc_normal_",
           "TransformerOptions"]
