"""Crops and resizing on read: images of any size in, ``image_size`` x ``image_size`` out.

Training: RandomResizedCrop (Szegedy et al. 2015, as torchvision and timm draw it) + horizontal flip;
evaluation: resize the shorter side to ``image_size / crop_pct``, centre crop (timm's ``crop_pct``).
The geometry is drawn from a ``random.Random`` seeded per sample, so it is the same on every rank
and worker, and fixed before decoding: with ``data.reduced_decode``, a JPEG whose crop is at least
``REDUCE_FROM`` times the output is decoded at 1/4 or 1/8 scale by libjpeg's DCT scaling (Pillow's
``Image.draft``), which skips most of the inverse DCT and the colour conversion.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vitssl.data.options import DataConfig

Box = tuple[int, int, int, int]  # top, left, height, width in the full-size image
# Decode reduced only from 4x: Huffman decoding is not scaled, and through Pillow a 1/2-scale decode of a
# 100 KB 500x375 photo costs more CPU than torchvision's full-size one; even from 4x it saves little
# (BENCHMARKS.md, "Reader at ImageNet sizes"), hence data.reduced_decode is off by default.
REDUCE_FROM = 4


def random_resized_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: random.Random) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``: 10 tries at a random area and log-uniform aspect
    ratio that fit, else the whole image clamped to the ratio range, centred."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_box(height: int, width: int, size: int, crop_pct: float) -> Box:
    """The region that resize-shorter-side-to ``size / crop_pct`` then centre-crop ``size`` keeps."""
    side = round(min(height, width) * crop_pct)
    h, w = min(side, height), min(side, width)
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class Geometry:
    box: Box
    flip: bool


class Cropper:
    """Per-sample geometry and pixels for one ``data:`` section; picklable (runs in the workers).

    ``mode``: "random_resized" (training), "center" (evaluation, or training with crop center)."""

    def __init__(self, data: DataConfig, mode: str):
        self.size, self.mode = data.image_size, mode
        self.scale, self.ratio, self.flip_p = data.crop_scale, data.crop_ratio, data.flip_p
        self.crop_pct, self.reduced = (data.eval_crop_pct if mode == "center" else 1.0), data.reduced_decode
        self.interpolation = InterpolationMode.BICUBIC if data.interpolation == "bicubic" else \
            InterpolationMode.BILINEAR
        self.rgb = data.channels == 3

    def geometry(self, height: int, width: int, seed: int) -> Geometry:
        if self.mode == "center":
            return Geometry(center_box(height, width, self.size, self.crop_pct), False)
        rng = random.Random(f"crop/{seed}")
        box = random_resized_box(height, width, self.scale, self.ratio, rng)
        return Geometry(box, rng.random() < self.flip_p)

    def apply(self, image: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """(C, H, W) uint8 -> (C, size, size) uint8."""
        top, left, h, w = geometry.box
        out = F.resized_crop(image, top, left, h, w, [self.size, self.size], self.interpolation, antialias=True)
        return out.flip(-1) if geometry.flip else out

    def jpeg(self, data: bytes, seed: int) -> torch.Tensor | None:
        """A JPEG decoded at the largest DCT reduction that keeps its crop at least ``size`` pixels, cropped
        and resized; None when no reduction applies (the caller decodes at full size)."""
        if not self.reduced:
            return None
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            geometry = self.geometry(height, width, seed)
            top, left, h, w = geometry.box
            reduce = min(h, w) / self.size  # the crop may shrink this much before it would be upsampled
            if reduce < REDUCE_FROM:
                return None
            mode = "RGB" if self.rgb else "L"
            im.draft(mode, (math.ceil(width / reduce), math.ceil(height / reduce)))
            sx, sy = im.size[0] / width, im.size[1] / height
            pixels = np.array(im.convert(mode))  # writable, as torch wants
        image = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)
        top, left = min(int(top * sy), image.shape[1] - 1), min(int(left * sx), image.shape[2] - 1)
        scaled = (top, left, max(1, min(round(h * sy), image.shape[1] - top)),
                  max(1, min(round(w * sx), image.shape[2] - left)))
        return self.apply(image, Geometry(scaled, geometry.flip))
