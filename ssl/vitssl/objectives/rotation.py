"""Rotation prediction (Gidaris et al. 2018; a CNN baseline): 4-way cross-entropy on the applied rotation.

The rotation k (0, 90, 180, 270 degrees counter-clockwise) is drawn per sample in the data
workers, so it is reproducible for any number of processes; the label is k itself.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitssl.objectives.base import Batch, Metrics, Objective, ObjectiveOptions, register


class RandomRotation90:
    """Per-sample transform: adds `rotated` = image turned k * 90 degrees counter-clockwise
    (torch.rot90 over H, W) and `rotation` = k (int64), k uniform in {0, 1, 2, 3}. Picklable."""

    def __call__(self, sample: dict) -> dict:
        k = int(torch.randint(4, ()))
        sample["rotated"] = torch.rot90(sample["image"], k, dims=(-2, -1)).contiguous()
        sample["rotation"] = torch.tensor(k, dtype=torch.int64)
        return sample


class RotationOptions(ObjectiveOptions):
    name: Literal["rotation"] = "rotation"


@register("rotation")
class Rotation(Objective):
    Options = RotationOptions

    def __init__(self, encoder: nn.Module, options: RotationOptions):
        super().__init__()
        self.encoder = encoder
        self.options = options
        self.head = nn.Linear(encoder.embed_dim, 4)

    def sample_transform(self):
        return RandomRotation90()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        logits = self.head(self.encoder(batch["rotated"])).float()
        loss = F.cross_entropy(logits, batch["rotation"])
        accuracy = (logits.argmax(-1) == batch["rotation"]).float().mean()
        return loss, {"loss_ce": loss.detach(), "rotation_acc": accuracy.detach()}
