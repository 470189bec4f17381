"""Per-sample training augmentations for supervised runs, run in the data workers.

Each takes and returns a sample dict whose `image` is (C, H, W) float in [0, 1]; randomness comes
from torch's global generator, which the loader seeds per (seed, epoch, sample index).
"""
from __future__ import annotations

from typing import Callable

import torch
from pydantic import BaseModel, Field, field_validator
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

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


class RandomAffine:
    """Per-sample transform: a small random rotation, shift and zoom of `image` (digits stay digits)."""

    def __init__(self, degrees: float, translate: float, scale: tuple[float, float]):
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        u = torch.rand(4).tolist()
        size = image.shape[-1]
        shift = [round((2 * u[1] - 1) * self.translate * size), round((2 * u[2] - 1) * self.translate * size)]
        sample["image"] = TF.affine(image, angle=(2 * u[0] - 1) * self.degrees, translate=shift,
                                    scale=self.scale[0] + u[3] * (self.scale[1] - self.scale[0]), shear=[0.0],
                                    interpolation=TF.InterpolationMode.BILINEAR)
        return sample


class AffineOptions(BaseModel):
    """The small random affine of training digits, as options: declared once, used by fine-tuning
    (`finetune.augment*`) and by the masked-reconstruction objectives (`objective.augment*`)."""

    augment: bool = Field(False, description="small random affine on training digits")
    augment_degrees: float = Field(10.0, ge=0)
    augment_translate: float = Field(0.1, ge=0, lt=1, description="fraction of the image size")
    augment_scale: tuple[float, float] = (0.9, 1.1)

    @field_validator("augment_scale")
    @classmethod
    def _scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"augment_scale must be 0 < low <= high, got {scale}")
        return scale

    def affine(self) -> RandomAffine | None:
        """The transform these options describe; None when `augment` is off."""
        return RandomAffine(self.augment_degrees, self.augment_translate, self.augment_scale) if self.augment else None


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
