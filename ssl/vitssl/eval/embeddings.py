"""Frozen-encoder features of a whole split, computed once."""
from __future__ import annotations

import torch

from vitssl.models import ViT
from vitssl.objectives.classify import pooled


@torch.no_grad()
def extract_features(encoder: ViT, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str = "cpu", pool: str = "cls") -> torch.Tensor:
    """Images (N, C, H, W) -> pooled embeddings (N, D) float32 on the CPU, encoder in eval mode
    (pool: see vitssl.objectives.classify.pooled).

    The encoder's train/eval mode is restored afterwards, and no parameter is touched.
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device)
        out.append(pooled(encoder, x, pool).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def standardise(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """Zero mean, unit variance per feature with the statistics of `train` only."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True)
    return [(t - mean) / (std + eps) for t in (train, *others)]
