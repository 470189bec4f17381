"""Supervised classification: cross-entropy on a linear head over the pooled encoder embedding.

The fine-tuning objective. It runs under the same Trainer as the pretext objectives, so a
fine-tune gets the same loop, schedule, checkpoints and multi-GPU support for free. A video
encoder (frames > 1) classifies an image as the clip that repeats it `frames` times.
Regularisation for training from scratch: RandAugment per sample (in the data workers) and Mixup per
batch (here, training mode only: the same coefficient mixes the images and their one-hot labels).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitssl.config.finetune import HeadOptions
from vitssl.data.augment import RandAugmentDigits, affine_transform, chain
from vitssl.models import Encoder
from vitssl.objectives.base import Batch, Metrics, Objective, ObjectiveOptions, register
from vitssl.objectives.mixup import mix_batch


class ClassifyOptions(ObjectiveOptions, HeadOptions):
    name: Literal["classify"] = "classify"


@register("classify")
class Classify(Objective):
    Options = ClassifyOptions

    def __init__(self, encoder: Encoder, options: ClassifyOptions):
        super().__init__()
        self.encoder = encoder
        self.options = options
        self.head_drop = nn.Dropout(options.head_dropout)
        self.head = nn.Linear(encoder.embed_dim, options.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def sample_transform(self):
        o = self.options
        return chain(RandAugmentDigits(o.randaugment_ops, o.randaugment_magnitude) if o.randaugment else None,
                     affine_transform(o))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> pooled embedding (B, D)."""
        return self.encoder.embed_images(images, self.options.pool)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.embed(images)))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        images, targets = batch["image"], batch["label"]
        o = self.options
        if self.training and (o.mixup_alpha > 0 or o.cutmix_alpha > 0):
            images, targets, _ = mix_batch(images, targets, o.num_classes, o.mixup_alpha, o.cutmix_alpha)
        logits = self.logits(images).float()
        loss = F.cross_entropy(logits, targets, label_smoothing=self.options.label_smoothing)
        hard = targets if targets.ndim == 1 else targets.argmax(-1)  # under Mixup: the larger share
        accuracy = (logits.argmax(-1) == hard).float().mean()
        return loss, {"loss_ce": loss.detach(), "accuracy": accuracy.detach()}
