"""Two augmented views of one image, for contrastive objectives (SimCLR-style).

`TwoViews` runs per sample in the data workers (the loader seeds torch's RNG per (seed, epoch,
sample index)), so every process draws the same views for a sample. It adds `view1` and `view2`,
each (C, H, W) float in [0, 1], and keeps `image` as it is.

Presets:
  digits (28x28 grayscale): RandomResizedCrop with a near-square ratio, a small RandomAffine,
      optional Gaussian blur and noise. No flip: a mirrored 2 is not a 2.
  color (e.g. 64x64 Tiny ImageNet): RandomResizedCrop, horizontal flip, ColorJitter,
      RandomGrayscale, optional blur and noise.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torchvision.transforms import v2


class ViewOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Literal["digits", "color"] = "digits"
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    degrees: float = Field(10.0, ge=0, description="RandomAffine rotation range (digits)")
    translate: float = Field(0.1, ge=0, lt=1, description="RandomAffine shift, fraction of the size (digits)")
    blur_p: float = Field(0.2, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = Field(0.0, ge=0, description="additive Gaussian noise (0: off)")
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip (color only)")
    jitter: float = Field(0.4, ge=0, description="ColorJitter brightness/contrast/saturation (color)")
    jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> ViewOptions:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        return self


def build_view_transform(options: ViewOptions, size: int) -> v2.Compose:
    """One random view: (C, H, W) float [0, 1] -> (C, size, size) float [0, 1]."""
    o = options
    steps: list = [v2.RandomResizedCrop(size, scale=o.crop_scale, ratio=o.crop_ratio, antialias=True)]
    if o.preset == "digits":
        steps.append(v2.RandomAffine(degrees=o.degrees, translate=(o.translate, o.translate)))
    else:
        steps += [v2.RandomHorizontalFlip(o.flip_p),
                  v2.RandomApply([v2.ColorJitter(o.jitter, o.jitter, o.jitter, min(o.jitter / 4, 0.5))], p=o.jitter_p),
                  v2.RandomGrayscale(o.grayscale_p)]
    if o.blur_p > 0:
        kernel = 3 if size <= 32 else 7
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=o.blur_sigma)], p=o.blur_p))
    if o.noise_std > 0:
        steps.append(v2.GaussianNoise(sigma=o.noise_std, clip=True))
    return v2.Compose(steps)


class TwoViews:
    """Per-sample transform: adds `view1`, `view2` (C, size, size) in [0, 1]. Picklable."""

    def __init__(self, options: ViewOptions, size: int):
        self.options, self.size = options, size
        self.view = build_view_transform(options, size)

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        if self.options.preset == "color" and image.shape[0] == 1:
            image = image.expand(3, -1, -1)  # a grayscale image among colour ones
        sample["view1"] = self.view(image).clamp(0, 1)
        sample["view2"] = self.view(image).clamp(0, 1)
        return sample
