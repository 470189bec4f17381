"""One sample: raw shard members -> decoded, cropped uint8 image -> the objective's per-sample transform.

Pixels stay uint8 unless the transform reads them (a transform says it does not with
``reads_pixels = False``): the float conversion then happens on the device, on whole batches.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import rgb_to_grayscale

from vitssl.data.crops import Cropper
from vitssl.data.manifest import DataError
from vitssl.data.options import DataConfig

Transform = Callable[[dict], dict]
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def image_ext(sample: dict) -> str:
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise DataError(f"sample {sample.get('__key__')!r} has members {sorted(k for k in sample if k[:2] != '__')}: "
                        f"expected an image ({', '.join(IMAGE_EXTS)})")
    return ext


def sample_label(sample: dict) -> int:
    """The ``.cls`` label; -1 without one (label-free objectives read none; vitssl.data.checks stops the others)."""
    return int(sample["cls"]) if "cls" in sample else -1


def decode_raw(sample: dict) -> tuple[torch.Tensor, int]:
    """Raw ``{"__key__", "png"|"jpg"|...: bytes[, "cls": bytes]}`` -> (uint8 image (C, H, W), label)."""
    ext = image_ext(sample)
    # torchvision's decoder is about twice as fast as PIL's on small images. Tiny ImageNet has some
    # grayscale JPEGs among the colour ones; PNG shards are grayscale throughout.
    mode = ImageReadMode.UNCHANGED if ext == "png" else ImageReadMode.RGB
    image = decode_image(torch.frombuffer(bytearray(sample[ext]), dtype=torch.uint8), mode=mode)
    return image, sample_label(sample)


def sample_index(sample: dict) -> int:
    """``__index__`` when the reader set it (the sample's position in its split), else the key's suffix
    (``<split>-<index>`` in data_prep shards)."""
    return sample["__index__"] if "__index__" in sample else int(sample["__key__"].rsplit("-", 1)[1])


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the one conversion, on the CPU or the device)."""
    return image.to(torch.float32).div_(255)


def decode_sample(sample: dict) -> dict:
    """A raw sample (or one from the decoded cache) -> ``{"image": (C, H, W) float32 in [0, 1],
    "label": int64, "index": int64}``."""
    image, label = sample["__decoded__"] if "__decoded__" in sample else decode_raw(sample)
    return {"image": to_float(image), "label": torch.tensor(label, dtype=torch.int64),
            "index": torch.tensor(sample_index(sample), dtype=torch.int64)}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the per-sample RNG: the same wherever (rank, worker) the sample is processed."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def reads_pixels(transform: Transform | None) -> bool:
    return transform is not None and getattr(transform, "reads_pixels", True)


class SampleMaker:
    """Raw sample -> ``{"image", "label", "index", ...the transform's keys}``; picklable, run in the workers.

    ``crop``: "none" (images as stored), "random_resized" or "center" (see ``vitssl.data.crops``)."""

    def __init__(self, data: DataConfig | None, crop: str, transform: Transform | None, seed: int, epoch: int):
        self.cropper = Cropper(data, crop) if data is not None and crop != "none" else None
        self.channels = data.channels if data is not None else None
        self.transform, self.seed, self.epoch = transform, seed, epoch
        self.float_in_worker = reads_pixels(transform)

    def __call__(self, raw: dict) -> dict:
        index = sample_index(raw)
        seed = sample_seed(self.seed, self.epoch, index)
        image, label = self._image(raw, seed)
        sample = {"image": to_float(image) if self.float_in_worker else image,
                  "label": torch.tensor(label, dtype=torch.int64), "index": torch.tensor(index, dtype=torch.int64)}
        if self.transform is None:
            return sample
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed also seeds every device backend (15x slower).
            torch.default_generator.manual_seed(seed)
            return self.transform(sample)

    def _image(self, raw: dict, seed: int) -> tuple[torch.Tensor, int]:
        if "__decoded__" in raw:
            image, label = raw["__decoded__"]
        else:
            ext = image_ext(raw)
            if self.cropper is not None and ext in ("jpg", "jpeg"):
                reduced = self.cropper.jpeg(raw[ext], seed)
                if reduced is not None:
                    return reduced, sample_label(raw)
            image, label = decode_raw(raw)
        if self.cropper is None:
            return image, label
        if image.shape[0] != self.channels:  # a grayscale or RGBA image among colour ones, or the reverse
            if self.channels == 3:
                image = image[:3] if image.shape[0] >= 3 else image.expand(3, -1, -1)
            else:
                image = rgb_to_grayscale(image[:3]) if image.shape[0] >= 3 else image[:1]
        return self.cropper.apply(image, self.cropper.geometry(image.shape[1], image.shape[2], seed)), label
