"""Light MAE decoder: inserts mask tokens, adds its own position embedding, predicts patch pixels."""
from __future__ import annotations

import torch
from torch import nn

from vitssl.models.layers import Block, init_weights, sincos_pos_embed, trunc_normal_


class MAEDecoder(nn.Module):
    """Encoder tokens -> per-patch predictions (B, N, patch_dim).

    For the `drop` style the encoder saw only visible tokens; pass ids_restore (B, N) and the
    decoder fills the masked positions with a learned mask token. Other styles pass all N tokens.
    The prefix (CLS) tokens go through the decoder blocks, without a position, as in MAE's
    reference: that is the only way the reconstruction loss reaches the CLS token.
    depth 0 gives a linear decoder: the pixels must then be readable from the encoder's tokens directly.
    """

    def __init__(self, encoder_dim: int, num_patches: int, grid: tuple[int, int, int], patch_dim: int,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_patches = num_patches
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_dim)
        self.apply(init_weights)
        trunc_normal_(self.mask_token)

    def forward(self, tokens: torch.Tensor, num_prefix: int, ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.embed(tokens)
        prefix, x = tokens[:, :num_prefix], tokens[:, num_prefix:]
        if ids_restore is not None:
            b, k, d = x.shape
            fill = self.mask_token.to(x.dtype).expand(b, self.num_patches - k, -1)
            x = torch.cat([x, fill], dim=1)
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([prefix, x + self.pos_embed], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x[:, num_prefix:]))
