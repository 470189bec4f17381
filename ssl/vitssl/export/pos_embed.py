"""Position embeddings across formats and image sizes.

This project's fixed 2-D sin-cos table encodes the patch row in its first half of channels and the
column in the second; facebookresearch/mae's `get_2d_sincos_pos_embed` (and so every official MAE
checkpoint) puts the column first. Same frequencies, axes swapped: a checkpoint's table is
recognised as one or the other (or learned) and, at another patch grid, a fixed table is recomputed
with its own formula while a learned one is resampled bicubically, as timm does.
"""
from __future__ import annotations

import torch

from vitssl.models.layers import sincos_pos_embed

VITSSL_SINCOS = "sincos"  # this project's fixed table (model.pos_embed sincos: a buffer, not saved)
MAE_SINCOS = "mae-sincos"  # mae's fixed table, kept as a learned parameter (as mae's own fine-tuning does)
LEARNED = "learned"


def mae_sincos(dim: int, grid: int) -> torch.Tensor:
    """mae's 2-D sin-cos table for a grid x grid patch grid, (grid*grid, dim), no class row."""
    ours = sincos_pos_embed(dim, (1, grid, grid))
    return torch.cat([ours[:, dim // 2:], ours[:, :dim // 2]], dim=1)


def table_kind(table: torch.Tensor, grid: int) -> str:
    """Which fixed table `table` (N, D) is, for a grid x grid patch grid; LEARNED if neither."""
    dim = table.shape[-1]
    if dim % 4 or table.shape[0] != grid * grid:
        return LEARNED
    table = table.float()
    # fp16/bf16 checkpoints round the table: 1e-2 is far below the 2.0 the two layouts differ by
    for kind, fixed in ((VITSSL_SINCOS, sincos_pos_embed(dim, (1, grid, grid))), (MAE_SINCOS, mae_sincos(dim, grid))):
        if torch.allclose(table, fixed, atol=1e-2):
            return kind
    return LEARNED


def resample_grid(pos: torch.Tensor, old_grid: int, new_grid: int, kind: str) -> torch.Tensor:
    """A (1, T*old^2, D) table of patch positions (no prefix rows) for a new_grid x new_grid grid.

    MAE_SINCOS is recomputed exactly; a learned table is resampled bicubically (antialiased) by
    timm's `resample_abs_pos_embed`, each time slot of a clip on its own.
    """
    from timm.layers import resample_abs_pos_embed

    dim = pos.shape[-1]
    slots = pos.shape[1] // (old_grid * old_grid)
    if kind == MAE_SINCOS:
        return mae_sincos(dim, new_grid).to(pos.dtype)[None].repeat(1, slots, 1)
    frames = pos.reshape(slots, 1, old_grid * old_grid, dim).float()
    out = [resample_abs_pos_embed(f, [new_grid, new_grid], [old_grid, old_grid], num_prefix_tokens=0) for f in frames]
    return torch.cat(out, dim=1).to(pos.dtype)

