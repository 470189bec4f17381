"""Per-sample training augmentations for supervised runs, run in the data workers.

Each takes and returns a sample dict whose `image` is (C, H, W) float in [0, 1]; randomness comes
from torch's global generator, which the loader seeds per (seed, epoch, sample index).
"""
from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

SampleTransform = Callable[[dict], dict]


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


class Chain:
    """Apply sample transforms in order. Picklable when its parts are."""

    def __init__(self, *transforms: SampleTransform):
        self.transforms = transforms

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
