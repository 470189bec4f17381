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


def cutmix(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): a box of area 1 - lambda from the partner image, lambda ~ Beta(alpha, alpha),
    the targets weighted by the areas actually kept (timm's ``correct_lam``)."""
    lam = float(Beta(alpha, alpha).sample())
    perm = torch.randperm(images.shape[0]).to(images.device)
    h, w = images.shape[-2:]
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)
    onehot = F.one_hot(labels, num_classes).to(images.dtype)
    return mixed, lam * onehot + (1 - lam) * onehot[perm], lam


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix of a batch; with both on, either one at even odds per batch (timm's switch_prob 0.5)."""
    if cutmix_alpha > 0 and (mixup_alpha == 0 or bool(torch.rand(()) < 0.5)):
        return cutmix(images, labels, num_classes, cutmix_alpha)
    return mixup(images, labels, num_classes, mixup_alpha)
