"""Vision Transformer encoder for images (2-D patches) and clips (3-D tubelets)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitssl.models.encoder import CLIPS, CLS_TOKEN, DROP_PATH, LAYER_IDS, MASKED_TOKENS
from vitssl.models.layers import Block, PatchEmbed, init_weights, sincos_pos_embed, trunc_normal_
from vitssl.models.registry import register_encoder


@dataclass
class ViTArgs:
    """Plain constructor arguments: what checkpoints store to rebuild the encoder."""

    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    cls_token: bool = True
    pos_embed: str = "sincos"  # "sincos" (fixed) or "learned"
    frames: int = 1
    tubelet: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@register_encoder("vit", ViTArgs, {MASKED_TOKENS, CLS_TOKEN, CLIPS, LAYER_IDS, DROP_PATH}, own_keys=("frames", "tubelet"))
class ViT(nn.Module):
    """Pre-norm ViT encoder.

    forward_features(x) -> (B, [1+]N, D) normed tokens (CLS first when enabled).
    The steps are exposed separately so objectives can encode a subset of tokens:
    embed(x) -> (B, N, D) patch tokens with position; encode(tokens) -> transformer output.
    """

    def __init__(self, args: ViTArgs):
        super().__init__()
        self.args = args
        d = args.embed_dim
        self.patch_embed = PatchEmbed(args.img_size, args.patch_size, args.in_chans, d, args.frames, args.tubelet)
        self.num_patches = self.patch_embed.num_patches
        self.num_prefix = 1 if args.cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if args.cls_token else None
        if args.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_pos_embed(d, self.patch_embed.grid)[None], persistent=False)
        elif args.pos_embed == "learned":
            self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, self.num_patches, d)))
        else:
            raise ValueError(f"model.pos_embed must be 'sincos' or 'learned', got {args.pos_embed!r}")
        self.blocks = nn.ModuleList(
            Block(d, args.num_heads, args.mlp_ratio, args.dropout, args.attn_dropout) for _ in range(args.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.apply(init_weights)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token)

    @property
    def embed_dim(self) -> int:
        return self.args.embed_dim

    @property
    def patch_dim(self) -> int:
        """Pixels per patch (or tubelet): the size of a reconstruction target."""
        a = self.args
        return a.tubelet * a.patch_size * a.patch_size * a.in_chans

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> pooled embedding (B, D)."""
        return self.pool(self.forward_features(x))

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

    @staticmethod
    def args_from_config(model, data) -> ViTArgs:
        """ViTArgs from the config's model and data sections; ValueError naming the key if they don't fit."""
        m = model
        if m.embed_dim % m.num_heads:
            raise ValueError(f"model.embed_dim ({m.embed_dim}) must be divisible by model.num_heads ({m.num_heads})")
        if m.frames % m.tubelet:
            raise ValueError(f"model.frames ({m.frames}) must be divisible by model.tubelet ({m.tubelet})")
        if data.image_size % m.patch_size:
            raise ValueError(f"data.image_size ({data.image_size}) must be divisible by model.patch_size "
                             f"({m.patch_size})")
        return ViTArgs(img_size=data.image_size, patch_size=m.patch_size, in_chans=data.channels,
                       embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                       dropout=m.dropout, attn_dropout=m.attn_dropout, cls_token=m.cls_token,
                       pos_embed=m.pos_embed, frames=m.frames, tubelet=m.tubelet)
