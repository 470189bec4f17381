"""Photo-like JPEG shards from scikit-learn's two sample photographs (no download): random crops of
the photographs, rescaled to the sizes asked for. Real image statistics matter for decode cost and
for crops; random-noise JPEGs are several times larger and slower to decode."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

from data_prep.writer import Sample, SplitSource, write_dataset


@lru_cache(maxsize=1)
def _photographs() -> tuple[Image.Image, ...]:
    return tuple(Image.fromarray(a) for a in load_sample_images().images)


def photo_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90, min_scale: float = 0.3) -> bytes:
    """A JPEG of ``width`` x ``height``: a random region (30-100% of a photograph's side) rescaled."""
    photo = _photographs()[rng.integers(len(_photographs()))]
    pw, ph = photo.size
    scale = rng.uniform(min_scale, 1.0)
    cw, ch = max(8, int(min(pw, ph * width / height) * scale)), max(8, int(min(ph, pw * height / width) * scale))
    left, top = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    image = photo.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_photo_shards(out: Path, counts: dict[str, int], sizes: list[tuple[int, int]], classes: int = 3,
                       seed: int = 0, quality: int = 90, shard_max_count: int = 1000) -> Path:
    """Shards + manifest of photo JPEGs, sizes cycling through ``sizes`` (mixed sizes when several)."""
    rng = np.random.default_rng(seed)
    names = [f"class{c}" for c in range(classes)]

    def samples(split: str, n: int):
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            yield Sample("jpg", photo_jpeg(rng, w, h, quality), i % classes, names[i % classes], f"{split}-{i}")

    head = {"dataset": "photos", "source": {"kind": "sklearn sample images", "seed": seed},
            "options": {"counts": counts, "sizes": sizes, "quality": quality},
            "image": {"height": sizes[0][1], "width": sizes[0][0], "channels": 3, "format": "jpeg"},
            "classes": names}
    write_dataset(out, head, {s: SplitSource(n, samples(s, n)) for s, n in counts.items()},
                  shard_max_count=shard_max_count, shard_max_bytes=1 << 30)
    return out
