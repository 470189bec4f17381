"""Vision Transformer encoder for images (2-D patches) and clips (3-D tubelets)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from vitssl.models.encoder import CLIPS, CLS_TOKEN, DROP_PATH, LAYER_IDS, MASKED_TOKENS, Encoder
from vitssl.models.layers import (
    Block,
    PatchEmbed,
    TransformerOptions,
    check_sincos_dim,
    init_weights,
    sincos_pos_embed,
    trunc_normal_,
)
from vitssl.models.registry import register_encoder


class ViTOptions(TransformerOptions):
    """`model:` for arch vit."""

    arch: Literal["vit"] = "vit"
    cls_token: bool = True
    pos_embed: Literal["sincos", "learned"] = "sincos"
    frames: int = Field(1, ge=1, description="clip length; 1 = images")
    tubelet: int = Field(1, ge=1, description="frames per tubelet")

    @model_validator(mode="after")
    def _clips(self) -> ViTOptions:
        if self.frames % self.tubelet:
            raise ValueError(f"model.frames ({self.frames}) must be divisible by model.tubelet ({self.tubelet})")
        if self.pos_embed == "sincos":
            check_sincos_dim(self.embed_dim, self.frames, "model.embed_dim")
        return self


@register_encoder(ViTOptions, {MASKED_TOKENS, CLS_TOKEN, CLIPS, LAYER_IDS, DROP_PATH})
class ViT(Encoder):
    """Pre-norm ViT encoder.

    forward_features(x) -> (B, [1+]N, D) normed tokens (CLS first when enabled).
    The steps are exposed separately so objectives can encode a subset of tokens:
    embed(x) -> (B, N, D) patch tokens with position; encode(tokens) -> transformer output.
    """

    def __init__(self, options: ViTOptions | None = None, image_size: int = 28, channels: int = 1):
        o = options or ViTOptions()
        super().__init__(o, image_size, channels)
        d = o.embed_dim
        self.patch_embed = PatchEmbed(image_size, o.patch_size, channels, d, o.frames, o.tubelet)
        self.num_patches = self.patch_embed.num_patches
        self.num_prefix = 1 if o.cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if o.cls_token else None
        if o.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_pos_embed(d, self.patch_embed.grid)[None], persistent=False)
        else:
            self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, self.num_patches, d)))
        self.blocks = nn.ModuleList(
            Block(d, o.num_heads, o.mlp_ratio, o.dropout, o.attn_dropout) for _ in range(o.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.apply(init_weights)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token)

    @property
    def embed_dim(self) -> int:
        return self.options.embed_dim

    @property
    def frames(self) -> int:
        return self.options.frames

    @property
    def patch_dim(self) -> int:
        """Pixels per patch (or tubelet): the size of a reconstruction target."""
        o = self.options
        return o.tubelet * o.patch_size * o.patch_size * self.channels

    def embed(self, x: torch.Tensor, replace: torch.Tensor | None = None,
              replace_token: torch.Tensor | None = None) -> torch.Tensor:
        """x -> (B, N, D) patch tokens plus position embedding.

        replace: optional (B, N) mask; where 1 the patch token is swapped for replace_token (1, 1, D)
        before the position is added (mask tokens in front of the encoder).
        """
        tokens = self.patch_embed(x)
        if replace is not None:
            w = replace.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - w) + replace_token.to(tokens.dtype) * w
        return tokens + self.pos_embed

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, D) tokens with position -> (B, [1+]K, D): prepend CLS, run blocks, final norm."""
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.embed(x))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, [1+]N, D) -> (B, D): the CLS token, or the mean of patch tokens without one."""
        if self.cls_token is not None:
            return features[:, 0]
        return features.mean(dim=1)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to `rate` at the last (timm, MAE)."""
        for i, block in enumerate(self.blocks):
            block.drop_path.p = rate * i / max(len(self.blocks) - 1, 1)

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise LR decay: embeddings 0, block i -> i + 1, final norm depth + 1."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1 if name.startswith("norm.") else 0
