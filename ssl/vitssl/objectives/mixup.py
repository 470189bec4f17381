"""Mixup (Zhang et al. 2018) of a training batch: one coefficient for the images and their labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Beta


def mixup(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """images (B, C, H, W), labels (B,) -> mixed images (B, C, H, W), soft targets (B, K), lambda.

    lambda ~ Beta(alpha, alpha) and a partner permutation, both from torch's global generator
    (seeded per run); x' = lambda x + (1 - lambda) x[perm], y' = lambda onehot(y) + (1 - lambda) onehot(y[perm]).
    """
    lam = float(Beta(alpha, alpha).sample())
    perm = torch.randperm(images.shape[0]).to(images.device)
    onehot = F.one_hot(labels, num_classes).to(images.dtype)
    return lam * images + (1 - lam) * images[perm], lam * onehot + (1 - lam) * onehot[perm], lam
