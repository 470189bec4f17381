"""Tiny ImageNet (tiny-imagenet-200, zip or extracted folder) -> original JPEG bytes in shards."""

from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from data_prep.errors import DataPrepError
from data_prep.writer import Sample, SplitSource, sha256_file

TOP = "tiny-imagenet-200"
SIZE = 64
LAYOUT = f"{TOP}/{{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}}"


class Tree:
    """The files of one tiny-imagenet-200 tree, named relative to its root, from a zip or a folder."""

    def __init__(self, source: Path):
        self.source = source
        if source.is_file():
            self._open_zip(source)
        elif source.is_dir():
            self._open_dir(source)
        else:
            raise DataPrepError(f"--source {source}: no such file or directory (give tiny-imagenet-200.zip "
                                f"or the extracted folder)")

    def _open_zip(self, path: Path) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataPrepError(f"--source {path}: not a readable zip file ({err})") from None
        roots = [n[: -len("wnids.txt")] for n in self._zip.namelist()
                 if n.endswith("wnids.txt") and n.count("/") <= 1]
        if len(roots) != 1:
            raise DataPrepError(f"zip {path} does not have the Tiny ImageNet layout {LAYOUT}")
        self._prefix = roots[0]
        self.files = {n[len(self._prefix):] for n in self._zip.namelist()
                      if n.startswith(self._prefix) and not n.endswith("/")}

    def _open_dir(self, path: Path) -> None:
        self._zip = None
        root = path if (path / "wnids.txt").is_file() else path / TOP
        if not (root / "wnids.txt").is_file():
            raise DataPrepError(f"folder {path} does not have the Tiny ImageNet layout {LAYOUT}")
        self._root = root
        self.files = {os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                      for d, _, names in os.walk(root) for f in names}

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(self._prefix + name)
            return (self._root / name).read_bytes()
        except (KeyError, OSError) as err:
            raise DataPrepError(f"{self.where(name)}: cannot read ({err})") from None

    def text(self, name: str) -> list[str]:
        if name not in self.files:
            raise DataPrepError(f"{self.where(name)} is missing: the source needs the layout {LAYOUT}")
        return self.read(name).decode("utf-8").splitlines()

    def where(self, name: str) -> str:
        return f"{self.source}:{name}" if self._zip is not None else str(self._root / name)


def _class_names(wnids: list[str], words: list[str]) -> tuple[list[str], list[str]]:
    full = dict(line.split("\t", 1) for line in words if "\t" in line)
    described = [full.get(w, w).strip() for w in wnids]
    short = [d.split(",")[0].strip() for d in described]
    dupes = {n for n, c in Counter(short).items() if c > 1}
    # Names key the manifest's per-class counts, so they must be unique.
    names = [f"{n} ({w})" if n in dupes else n for n, w in zip(short, wnids, strict=True)]
    return names, described


def _val_labels(tree: Tree, label_of: dict[str, int]) -> list[tuple[str, int]]:
    items = []
    for line in tree.text("val/val_annotations.txt"):
        if not line.strip():
            continue
        fname, wnid = line.split("\t")[:2]
        if wnid not in label_of:
            raise DataPrepError(f"{tree.where('val/val_annotations.txt')}: {fname} has wnid {wnid} "
                                f"that is not in wnids.txt")
        items.append((f"val/images/{fname}", label_of[wnid]))
    return items


def _pick(items: list[tuple[str, int]], n_classes: int, per_class: int | None, split: str,
          rng: np.random.Generator, tree: Tree) -> list[tuple[str, int]]:
    by_class: list[list[str]] = [[] for _ in range(n_classes)]
    for name, label in items:
        by_class[label].append(name)
    chosen = []
    for label, names in enumerate(by_class):
        names.sort()
        if per_class is not None and per_class > len(names):
            raise DataPrepError(f"{split}: class {label} has {len(names)} images in {tree.source}, "
                                f"{per_class} requested; lower --per-class")
        rows = rng.permutation(len(names))[:per_class]
        chosen += [(names[r], label) for r in rows]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _samples(tree: Tree, items: list[tuple[str, int]], names: list[str]) -> Iterator[Sample]:
    for name, label in items:
        if name not in tree.files:
            raise DataPrepError(f"{tree.where(name)} is listed but missing: re-extract the dataset")
        data = tree.read(name)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                size = img.size
        except (OSError, ValueError) as err:
            raise DataPrepError(f"{tree.where(name)}: unreadable JPEG ({err}); re-download the dataset") from None
        if size != (SIZE, SIZE):
            raise DataPrepError(f"{tree.where(name)}: image is {size[0]}x{size[1]}, expected {SIZE}x{SIZE}")
        yield Sample("jpg", data, label, names[label], name)


def load(source: Path, train_per_class: int | None, test_per_class: int | None,
         seed: int) -> tuple[dict, dict[str, SplitSource]]:
    """-> (manifest fields: source/classes/image/wnids/class_words, splits)."""
    tree = Tree(source)
    wnids = sorted(w.strip() for w in tree.text("wnids.txt") if w.strip())
    names, described = _class_names(wnids, tree.text("words.txt"))
    label_of = {w: i for i, w in enumerate(wnids)}
    train = [(n, label_of[n.split("/")[1]]) for n in tree.files
             if n.startswith("train/") and n.endswith(".JPEG") and n.split("/")[1] in label_of]
    if not train:
        raise DataPrepError(f"{tree.where('train')}: no train/<wnid>/images/*.JPEG files; expected {LAYOUT}")
    rng = np.random.default_rng(seed)
    splits = {
        "train": _pick(train, len(wnids), train_per_class, "train", rng, tree),
        "test": _pick(_val_labels(tree, label_of), len(wnids), test_per_class, "test (val)", rng, tree),
    }
    description = {"kind": "zip" if source.is_file() else "folder", "path": str(source.resolve())}
    if source.is_file():
        description["sha256"] = sha256_file(source)
    fields = {
        "source": description,
        "image": {"height": SIZE, "width": SIZE, "channels": 3, "format": "jpeg"},
        "classes": names,
        "wnids": wnids,
        "class_words": described,
    }
    return fields, {s: SplitSource(len(items), _samples(tree, items, names)) for s, items in splits.items()}
