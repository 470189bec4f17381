"""A small convolutional encoder for the CNN baselines (autoencoder, rotation, SimCLR).

Conv3x3 - GroupNorm - ReLU stages; every stage after the first halves the resolution
(28 -> 14 -> 7 with three stages). GroupNorm instead of BatchNorm: no running statistics, so
results do not depend on the per-process batch size or need synchronising across DDP ranks.

It offers the same surface as the ViT, so objectives and evaluation take either:
forward_features(x) -> (B, N, D) tokens (the last feature map, flattened), pool -> (B, D) mean,
num_prefix = 0 (no CLS token).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from vitssl.models.encoder import FEATURE_MAP, Encoder, EncoderOptions
from vitssl.models.registry import register_encoder


class CNNOptions(EncoderOptions):
    """`model:` for arch cnn."""

    arch: Literal["cnn"] = "cnn"
    cnn_channels: list[int] = Field([32, 64, 128], min_length=1, description="width of each conv stage")
    cnn_groups: int = Field(8, ge=1, description="GroupNorm groups (each width must be divisible by it)")

    @model_validator(mode="after")
    def _widths(self) -> CNNOptions:
        if any(c <= 0 or c % self.cnn_groups for c in self.cnn_channels):
            raise ValueError(f"model.cnn_channels {self.cnn_channels}: every width must be positive and "
                             f"divisible by model.cnn_groups ({self.cnn_groups})")
        return self


def conv_stage(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    """(B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True))


@register_encoder(CNNOptions, {FEATURE_MAP})
class CNN(Encoder):
    def __init__(self, options: CNNOptions | None = None, image_size: int = 28, channels: int = 1):
        o = options or CNNOptions()
        super().__init__(o, image_size, channels)
        widths = [channels, *o.cnn_channels]
        self.stages = nn.Sequential(*(conv_stage(widths[i], widths[i + 1], 1 if i == 0 else 2, o.cnn_groups)
                                      for i in range(len(o.cnn_channels))))
        self.grid = image_size
        for _ in o.cnn_channels[1:]:
            self.grid = (self.grid + 1) // 2
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def embed_dim(self) -> int:
        return self.options.cnn_channels[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, h, w) with h = w = self.grid."""
        return self.stages(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, h*w, D): the last feature map as tokens."""
        return self.feature_map(x).flatten(2).transpose(1, 2)


class CNNDecoder(nn.Module):
    """Pooled embedding (B, D) -> image (B, C, H, W) in [0, 1]: the mirror of the encoder.

    A linear map to the last feature map's shape, then one stride-2 transposed conv per encoder
    stride (doubling the resolution), GroupNorm - ReLU between, and a final 3x3 conv to pixels.
    """

    def __init__(self, encoder: CNN):
        super().__init__()
        o, size = encoder.options, encoder.image_size
        ups = len(o.cnn_channels) - 1
        self.grid = size // 2 ** ups
        if self.grid * 2 ** ups != size:
            raise ValueError(f"cnn decoder: data.image_size {size} is not divisible by 2^{ups}")
        widths = o.cnn_channels[::-1]
        self.fc = nn.Linear(widths[0], widths[0] * self.grid * self.grid)
        self.up = nn.Sequential(*(nn.Sequential(nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                                                nn.GroupNorm(o.cnn_groups, widths[i + 1]), nn.ReLU(inplace=True))
                                  for i in range(ups)))
        self.out = nn.Conv2d(widths[-1], encoder.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, self.grid, self.grid)
        return torch.sigmoid(self.out(self.up(x)))
