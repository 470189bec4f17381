"""A small convolutional encoder for the seed-003 baselines (autoencoder, rotation, SimCLR).

Conv3x3 - GroupNorm - ReLU stages; every stage after the first halves the resolution
(28 -> 14 -> 7 with three stages). GroupNorm instead of BatchNorm: no running statistics, so
results do not depend on the per-process batch size or need synchronising across DDP ranks.

It offers the same surface as the ViT, so objectives and evaluation take either:
forward_features(x) -> (B, N, D) tokens (the last feature map, flattened), pool -> (B, D) mean,
num_prefix = 0 (no CLS token).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vitssl.models.encoder import FEATURE_MAP
from vitssl.models.registry import register_encoder


@dataclass
class CNNArgs:
    """Plain constructor arguments: what checkpoints store to rebuild the encoder."""

    img_size: int = 28
    in_chans: int = 1
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    groups: int = 8  # GroupNorm groups (each stage's width must be divisible by it)

    def to_dict(self) -> dict:
        return asdict(self)


def conv_stage(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    """(B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True))


@register_encoder("cnn", CNNArgs, {FEATURE_MAP}, own_keys=("cnn_channels", "cnn_groups"))
class CNN(nn.Module):
    def __init__(self, args: CNNArgs):
        super().__init__()
        bad = [c for c in args.channels if c % args.groups]
        if not args.channels or bad:
            raise ValueError(f"model.cnn_channels {args.channels} must be non-empty and divisible by "
                             f"model.cnn_groups {args.groups}")
        self.args = args
        widths = [args.in_chans, *args.channels]
        self.stages = nn.Sequential(*(conv_stage(widths[i], widths[i + 1], 1 if i == 0 else 2, args.groups)
                                      for i in range(len(args.channels))))
        self.num_prefix = 0
        self.grid = args.img_size
        for _ in args.channels[1:]:
            self.grid = (self.grid + 1) // 2
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def embed_dim(self) -> int:
        return self.args.channels[-1]

    @staticmethod
    def args_from_config(model, data) -> CNNArgs:
        bad = [c for c in model.cnn_channels if c <= 0 or c % model.cnn_groups]
        if bad:
            raise ValueError(f"model.cnn_channels {model.cnn_channels}: every width must be positive and "
                             f"divisible by model.cnn_groups ({model.cnn_groups})")
        return CNNArgs(img_size=data.image_size, in_chans=data.channels, channels=list(model.cnn_channels),
                       groups=model.cnn_groups)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, h, w) with h = w = self.grid."""
        return self.stages(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, h*w, D): the last feature map as tokens."""
        return self.feature_map(x).flatten(2).transpose(1, 2)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): global average pooling."""
        return features.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> pooled embedding (B, D)."""
        return self.pool(self.forward_features(x))


class CNNDecoder(nn.Module):
    """Pooled embedding (B, D) -> image (B, C, H, W) in [0, 1]: the mirror of the encoder.

    A linear map to the last feature map's shape, then one stride-2 transposed conv per encoder
    stride (doubling the resolution), GroupNorm - ReLU between, and a final 3x3 conv to pixels.
    """

    def __init__(self, args: CNNArgs):
        super().__init__()
        ups = len(args.channels) - 1
        self.grid = args.img_size // 2 ** ups
        if self.grid * 2 ** ups != args.img_size:
            raise ValueError(f"cnn decoder: image size {args.img_size} is not divisible by 2^{ups}")
        widths = args.channels[::-1]
        self.fc = nn.Linear(widths[0], widths[0] * self.grid * self.grid)
        self.up = nn.Sequential(*(nn.Sequential(nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                                                nn.GroupNorm(args.groups, widths[i + 1]), nn.ReLU(inplace=True))
                                  for i in range(ups)))
        self.out = nn.Conv2d(widths[-1], args.in_chans, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, self.grid, self.grid)
        return torch.sigmoid(self.out(self.up(x)))
