"""Factories for tiny on-disk datasets (IDX files, Tiny ImageNet trees) and shard directories."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.cli import run

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (magic 2048 + ndim, big-endian dims, raw data)."""
    header = (2048 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, train_per_class: int = 20, test_per_class: int = 8, seed: int = 0,
                  gz: bool = False, size: int = 28) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four fake MNIST IDX files with random pixels, labels 0-9; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, (len(labels), size, size), dtype=np.uint8)
        for name, array in zip(IDX_NAMES[split], (images, labels), strict=True):
            data = idx_bytes(array)
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (directory / name).write_bytes(data)
        arrays[split] = (images, labels)
    return arrays


def jpeg_bytes(rng: np.random.Generator, mode: str = "RGB", size: int = 64) -> bytes:
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format="JPEG")
    return buf.getvalue()


TINY_WNIDS = ["n02", "n01", "n03"]  # unsorted on purpose: classes are the sorted wnids
TINY_WORDS = {"n01": "goldfish, Carassius auratus", "n02": "tabby, tabby cat", "n03": "bullfrog"}


def tiny_imagenet_files(train_per_class: int = 4, val_total: int = 6, seed: int = 0) -> dict[str, bytes]:
    """Files of a miniature tiny-imagenet-200 tree (relative to its top folder); one val image is grayscale."""
    rng = np.random.default_rng(seed)
    files = {"wnids.txt": "\n".join(TINY_WNIDS).encode() + b"\n",
             "words.txt": "".join(f"{w}\t{t}\n" for w, t in TINY_WORDS.items()).encode()}
    for wnid in TINY_WNIDS:
        for i in range(train_per_class):
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = jpeg_bytes(rng)
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
    lines = []
    for i in range(val_total):
        wnid = sorted(TINY_WNIDS)[i % len(TINY_WNIDS)]
        files[f"val/images/val_{i}.JPEG"] = jpeg_bytes(rng, "L" if i == 0 else "RGB")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    files["val/val_annotations.txt"] = "".join(lines).encode()
    return files


def write_tiny_zip(path: Path, files: dict[str, bytes], top: str = "tiny-imagenet-200") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return path


def write_tiny_folder(parent: Path, files: dict[str, bytes]) -> Path:
    root = parent / "tiny-imagenet-200"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def make_mnist_shards(out: Path, *args: str) -> Path:
    """Shards of the embedded MNIST digits via the CLI entry point (extra CLI args in ``args``)."""
    run(["mnist", "--out", str(out), *args])
    return out
