"""One image file -> what a shard stores: the two passes of ``data_prep images``, run in workers.

Pass 1 reads headers only (is it an image, how many channels); pass 2 decodes fully, applies the
EXIF orientation, converts to the requested channels, resizes and encodes, or keeps the original
bytes when they already are what was asked for (no generation loss). Both are pure functions of
their arguments, mapped in input order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Header:
    channels: int  # 1 or 3: what the file holds before conversion
    format: str


@dataclass(frozen=True)
class Encoding:
    """What the second pass produces for every file (a picklable, pure function of these)."""

    channels: int
    max_side: int | None
    size: int | None
    format: str  # jpg | png | keep
    quality: int



# what Pillow raises for a file it cannot decode: the reason skipped.txt gives for each
UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def why_unreadable(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):  # an OSError: checked first
        return "not an image Pillow can read"
    if isinstance(err, Image.DecompressionBombError):
        return f"too large ({err})"
    return f"corrupt or truncated ({err})"

def read_header(path: str) -> Header | str:
    """The file's channels and format from its header, or why it is no usable image."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            return Header(1 if img.mode in GRAY_MODES else 3, img.format or "?")
    except UNREADABLE as err:
        return why_unreadable(err)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Transparent pixels become white (their colour values are arbitrary, often black)."""
    rgba = img.convert("RGBA")
    back = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(back, rgba).convert("RGB")


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grayscale: Pillow's convert("L") would clip at 255, not rescale
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = _flatten_alpha(img)
    return img.convert("RGB" if channels == 3 else "L")


def _target_size(w: int, h: int, enc: Encoding) -> tuple[int, int]:
    if enc.size:
        return enc.size, enc.size
    if enc.max_side and max(w, h) > enc.max_side:
        scale = enc.max_side / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))
    return w, h


def _resize(img: Image.Image, enc: Encoding) -> Image.Image:
    w, h = img.size
    if enc.size:  # shorter side to N, then the centre N x N (torchvision Resize + CenterCrop)
        scale = enc.size / min(w, h)
        nw, nh = max(enc.size, round(w * scale)), max(enc.size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - enc.size) // 2, (nh - enc.size) // 2
        return img.crop((left, top, left + enc.size, top + enc.size))
    target = _target_size(w, h, enc)
    return img if target == (w, h) else img.resize(target, Image.Resampling.BICUBIC)


def _png_bit_depth(data: bytes) -> int:
    return data[24] if len(data) > 24 and data[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _keeps_original(img: Image.Image, data: bytes, enc: Encoding) -> str | None:
    """The extension to store the original bytes under, or None when they must be re-encoded."""
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (0, 1) or _target_size(*img.size, enc) != img.size:
        return None
    if img.format == "JPEG" and enc.format in ("keep", "jpg") and enc.channels == 3 and img.mode == "RGB":
        return "jpg"  # the reader decodes JPEG as RGB: a grayscale JPEG must become PNG for 1 channel
    if (img.format == "PNG" and enc.format in ("keep", "png") and _png_bit_depth(data) == 8
            and img.mode == ("RGB" if enc.channels == 3 else "L") and "transparency" not in img.info):
        return "png"
    return None


def _encode(img: Image.Image, source_format: str, enc: Encoding) -> tuple[str, bytes]:
    if enc.format == "jpg" or (enc.format == "keep" and source_format == "JPEG" and enc.channels == 3):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=enc.quality)
        return "jpg", buf.getvalue()
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return "png", buf.getvalue()


def convert(path: str, enc: Encoding) -> tuple[str, bytes, int, int, bool] | str:
    """-> (ext, bytes, width, height, kept original) for the shard, or why the file is skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a truncated or corrupt file fails here, not in the training loader
            kept = _keeps_original(img, data, enc)
            if kept is not None:
                return kept, data, img.size[0], img.size[1], True
            source_format = img.format or ""
            out = _resize(_to_channels(ImageOps.exif_transpose(img), enc.channels), enc)
        ext, encoded = _encode(out, source_format, enc)
        return ext, encoded, out.size[0], out.size[1], False
    except UNREADABLE as err:
        return why_unreadable(err)


def convert_with(args: tuple[str, Encoding]) -> tuple[str, bytes, int, int, bool] | str:
    return convert(*args)


class Pool:
    """``map`` in input order, in ``workers`` processes (1: this one): same results for any number."""

    def __init__(self, workers: int):
        self.workers = workers
        # fork: the workers start at once, without re-importing the caller's main module (spawn and
        # forkserver do, seconds for a script that imports much); they run only Pillow and numpy code
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        self._pool = get_context(method).Pool(workers) if workers > 1 else None

    def map(self, fn: Callable, items: Iterable, chunksize: int = 8) -> Iterator:
        if self._pool is None:
            return map(fn, items)
        return self._pool.imap(fn, items, chunksize)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
