"""Per-sample training augmentations for supervised runs, run in the data workers.

Each takes and returns a sample dict whose `image` is (C, H, W) float in [0, 1]; randomness comes
from torch's global generator, which the loader seeds per (seed, epoch, sample index).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

SampleTransform = Callable[[dict], dict]


def affine_copies(image: torch.Tensor, angles: list[float], translates: list[tuple[float, float]],
                  scales: list[float]) -> torch.Tensor:
    """(C, H, W) -> (N, C, H, W): copy n rotated by angles[n] degrees about the centre, scaled by
    scales[n] and shifted by translates[n] pixels; bilinear, zero fill. Equal to torchvision's
    ``affine`` (tested) but one ``grid_sample`` for all N copies: per call, torchvision's grid
    set-up costs more than the sampling of a small digit."""
    c, h, w = image.shape
    theta = []
    for angle, (tx, ty), scale in zip(angles, translates, scales, strict=True):
        cos, sin = math.cos(math.radians(angle)) / scale, math.sin(math.radians(angle)) / scale
        # the inverse map, in pixels from the centre, rescaled to grid_sample's [-1, 1] (align_corners=False)
        theta.append([[cos, sin * h / w, (-cos * tx - sin * ty) * 2 / w],
                      [-sin * w / h, cos, (sin * tx - cos * ty) * 2 / h]])
    n = len(theta)
    grid = _base_grid(h, w, image.dtype) @ torch.tensor(theta, dtype=image.dtype).transpose(1, 2)
    return F.grid_sample(image.expand(n, c, h, w), grid.view(n, h, w, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """(H * W, 3) pixel centres in [-1, 1] plus a 1, as F.affine_grid makes them (align_corners=False);
    kept, since making them is most of affine_grid's cost on a small image."""
    ys, xs = torch.meshgrid(torch.linspace(1 / h - 1, 1 - 1 / h, h, dtype=dtype),
                            torch.linspace(1 / w - 1, 1 - 1 / w, w, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(h * w, 3)


class RandAugmentDigits:
    """torchvision's RandAugment (Cubuk et al. 2020) on the uint8 image: `num_ops` random ops at
    `magnitude` (of 31 bins). RandAugment's ops are defined on uint8 pixels, so the float image is
    quantised, augmented, and turned back into float [0, 1]."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9):
        self.op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def augment_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 -> (C, H, W) uint8."""
        return self.op(image)

    def __call__(self, sample: dict) -> dict:
        image = sample["image"].mul(255).round_().to(torch.uint8)
        sample["image"] = self.augment_uint8(image).to(torch.float32).div_(255)
        return sample


class RandomAffine:
    """Per-sample transform: a small random rotation, shift and zoom of `image` (digits stay digits)."""

    def __init__(self, degrees: float, translate: float, scale: tuple[float, float]):
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        u = torch.rand(4).tolist()
        size = image.shape[-1]
        shift = [round((2 * u[1] - 1) * self.translate * size), round((2 * u[2] - 1) * self.translate * size)]
        scale = self.scale[0] + u[3] * (self.scale[1] - self.scale[0])
        sample["image"] = affine_copies(image, [(2 * u[0] - 1) * self.degrees], [shift], [scale])[0]
        return sample


def affine_transform(options) -> RandomAffine | None:
    """The transform `options` (vitssl.config.augment.AffineOptions) describe; None when `augment` is off."""
    o = options
    return RandomAffine(o.augment_degrees, o.augment_translate, o.augment_scale) if o.augment else None


class Chain:
    """Apply sample transforms in order. Picklable when its parts are."""

    def __init__(self, *transforms: SampleTransform):
        self.transforms = transforms

    @property
    def reads_pixels(self) -> bool:
        return any(getattr(t, "reads_pixels", True) for t in self.transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


def chain(*transforms: SampleTransform | None) -> SampleTransform | None:
    """The transforms that are not None, chained; None when there are none; the one when one."""
    kept = [t for t in transforms if t is not None]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else Chain(*kept)
