"""Autoencoder baseline (CNN): encode to the pooled embedding, decode the whole image, MSE.

The bottleneck is the embedding that evaluation probes, so reconstruction must go through it.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from vitssl.models import FEATURE_MAP
from vitssl.models.cnn import CNN, CNNDecoder
from vitssl.objectives.base import Batch, ImageRows, Metrics, Objective, ObjectiveOptions, register


class CNNAutoencoderOptions(ObjectiveOptions):
    name: Literal["cnn_autoencoder"] = "cnn_autoencoder"


@register("cnn_autoencoder")
class CNNAutoencoder(Objective):
    Options = CNNAutoencoderOptions
    requires = frozenset({FEATURE_MAP})

    def __init__(self, encoder: CNN, options: CNNAutoencoderOptions):
        super().__init__()
        self.encoder = encoder
        self.options = options
        self.decoder = CNNDecoder(encoder)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) in [0, 1]."""
        return self.decoder(self.encoder(images))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        loss = F.mse_loss(self.reconstruct(batch["image"]).float(), batch["image"].float())
        return loss, {"loss_mse": loss.detach()}

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, ImageRows]:
        images = batch["image"][:8]
        return {"reconstruction.png": ImageRows({"image": images, "reconstruction": self.reconstruct(images)},
                                                "autoencoder")}
