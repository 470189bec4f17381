"""Patchify and random masking helpers shared by the MAE-family objectives."""
from __future__ import annotations

import torch


def patchify(x: torch.Tensor, patch_size: int, tubelet: int = 1) -> torch.Tensor:
    """Pixels -> per-patch targets, in the token order of PatchEmbed.

    x: (B, C, H, W) -> (B, N, p*p*C); or clip (B, C, T, H, W) -> (B, N, t*p*p*C).
    """
    p = patch_size
    if x.dim() == 4:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // tubelet, tubelet, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (t // tubelet) * (h // p) * (w // p), tubelet * p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, size: int) -> torch.Tensor:
    """Inverse of patchify for images: (B, N, p*p*C) -> (B, C, H, W)."""
    p, g = patch_size, size // patch_size
    b = patches.shape[0]
    x = patches.reshape(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, g * p, g * p)


def mask_from_noise(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting noise, as in MAE.

    noise: (B, N) uniform values; the lowest (1 - ratio) * N are kept.
    Returns ids_keep (B, K), mask (B, N) with 1 = masked, ids_restore (B, N).
    Every sample gets exactly N - K masked patches.
    """
    n = noise.shape[1]
    keep = num_visible(n, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    return ids_keep, torch.gather(mask, 1, ids_restore), ids_restore


def num_visible(num_patches: int, mask_ratio: float) -> int:
    return max(1, int(round(num_patches * (1 - mask_ratio))))


def tube_noise(spatial_noise: torch.Tensor, time_slots: int) -> torch.Tensor:
    """Repeat one spatial noise map over time so every frame masks the same positions.

    spatial_noise: (B, S) -> (B, T*S) in PatchEmbed token order (time-major).
    """
    return spatial_noise.repeat(1, time_slots)


def unpatchify_clip(patches: torch.Tensor, patch_size: int, tubelet: int, channels: int, frames: int,
                    size: int) -> torch.Tensor:
    """Inverse of patchify for clips: (B, N, t*p*p*C) -> (B, C, T, H, W)."""
    p, t, g = patch_size, tubelet, size // patch_size
    b = patches.shape[0]
    x = patches.reshape(b, frames // t, g, g, t, p, p, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, frames, g * p, g * p)
