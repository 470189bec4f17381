"""``python -m data_prep images SRC --out DIR``: a user's own images -> shards.

SRC is an ImageFolder tree (``SRC/<class>/...``, optionally under ``SRC/train``, ``SRC/val``,
``SRC/test``), a folder of unlabeled images (flat, or nested with ``--unlabeled``), or a CSV/TSV
list file (``path[,label][,split]``). Two passes over the files, both in a process pool whose
results come back in input order, so the shards do not depend on ``--workers``:

1. headers only: what opens as an image, its mode and size; the majority channel count;
2. full decode, EXIF orientation, conversion to the channels, resize, encode (or the original bytes).

Every file that cannot be used is listed with its reason in ``skipped.txt``; ``--strict`` makes the
first one an error instead.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from data_prep.convert import Encoding, Pool, convert_with, read_header
from data_prep.errors import DataPrepError
from data_prep.writer import (
    FORMAT_VERSION,
    Sample,
    SplitSource,
    is_up_to_date,
    read_manifest,
    summary,
    write_dataset,
)

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LIST_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class Item:
    """One input file: where it is, what the manifest calls it, its label and split (if given)."""

    path: str
    source_id: str
    class_name: str | None
    split: str | None


# ---------------------------------------------------------------- finding the files


def _visible_files(root: Path) -> list[Path]:
    """Every non-hidden file below ``root``, sorted by relative path (hidden folders skipped too)."""
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder, n) for n in names if not n.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _class_folder_items(root: Path, top: Path, split: str | None) -> list[Item]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        raise DataPrepError(f"{root} holds files ({loose[0]}, ...) beside class folders: put every image in a "
                            f"class folder, or pass --unlabeled to shard them all without labels")
    if not classes:
        raise DataPrepError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    items = []
    for name in classes:
        files = _visible_files(root / name)
        if not files:
            raise DataPrepError(f"class folder {root / name} is empty: add images or remove the folder")
        items += [Item(str(p), p.relative_to(top).as_posix(), name, split) for p in files]
    return items


def find_items(src: Path, unlabeled: bool) -> tuple[list[Item], str]:
    """-> (items, layout): layout is ``imagefolder``, ``imagefolder-splits``, ``unlabeled`` or ``list``."""
    if src.is_file():
        return read_list(src), "list"
    if not src.is_dir():
        raise DataPrepError(f"{src}: no such file or directory (give a folder of images or a CSV/TSV list file)")
    subdirs = {d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")}
    split_dirs = {d: SPLIT_DIRS[d.lower()] for d in subdirs if d.lower() in SPLIT_DIRS}
    if split_dirs and "train" in split_dirs.values():
        if len(set(split_dirs.values())) != len(split_dirs):
            raise DataPrepError(f"{src} has several folders for one split ({', '.join(sorted(split_dirs))}): keep one")
        items = []
        for folder, split in sorted(split_dirs.items(), key=lambda kv: ("train", "val", "test").index(kv[1])):
            if unlabeled:
                items += [Item(str(p), p.relative_to(src).as_posix(), None, split)
                          for p in _visible_files(src / folder)]
            else:
                items += _class_folder_items(src / folder, src, split)
        return items, "unlabeled" if unlabeled else "imagefolder-splits"
    if unlabeled or not subdirs:
        items = [Item(str(p), p.relative_to(src).as_posix(), None, None) for p in _visible_files(src)]
        if not items:
            raise DataPrepError(f"{src} holds no files: put the images there")
        return items, "unlabeled"
    return _class_folder_items(src, src, None), "imagefolder"


def read_list(path: Path) -> list[Item]:
    """A CSV/TSV of ``path[,label][,split]`` rows (an optional header row naming the columns);
    relative paths are relative to the list file's folder."""
    if path.suffix.lower() not in LIST_SUFFIXES:
        raise DataPrepError(f"{path}: a list file must end in {', '.join(LIST_SUFFIXES)} (or pass a folder)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataPrepError(f"{path}: cannot read the list file ({err})") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise DataPrepError(f"{path}: the list file has no rows (expected path[,label][,split])")
    widths = {len(r) for r in rows}
    columns = max(widths)
    if len(widths) != 1 or columns > 3:
        raise DataPrepError(f"{path}: every row must have the same 1 to 3 columns path[,label][,split]")
    items = []
    for number, row in enumerate(rows, 1):
        file, label, split = (c.strip() for c in (row + ["", ""])[:3])
        if len(row) >= 2 and not label:
            raise DataPrepError(f"{path} row {number}: empty label for {file}: give every row a label or none")
        if split and split.lower() not in SPLIT_DIRS:
            raise DataPrepError(f"{path} row {number}: split {split!r} is not one of train, val, test")
        full = Path(file) if Path(file).is_absolute() else path.parent / file
        items.append(Item(str(full), file, label or None, SPLIT_DIRS[split.lower()] if split else None))
    if columns == 3 and not any(i.split == "train" for i in items):
        raise DataPrepError(f"{path}: no row has split train")
    return items


def listing_sha256(items: list[Item]) -> str:
    """Identity of the input: every file's name, label, split, size and modification time."""
    h = hashlib.sha256()
    for item in items:
        try:
            st = os.stat(item.path)
            stamp = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{item.source_id}\t{item.class_name}\t{item.split}\t{stamp}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- splits and labels


def class_order(names: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when every name is a number (so "10" follows "9")."""
    unique = set(names)
    if unique and all(n.isdigit() for n in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def assign_splits(items: list[Item], val_per_class: int | None, val_fraction: float | None,
                  rng: np.random.Generator) -> dict[str, list[Item]]:
    """Splits in final (shuffled) order: from the tree or list when it has them, plus a stratified,
    seeded ``val`` carved from train when asked for and there is none."""
    splits: dict[str, list[Item]] = {}
    for item in items:
        splits.setdefault(item.split or "train", []).append(item)
    if val_per_class or val_fraction:
        if "val" in splits:
            raise DataPrepError("the source already has a val split: drop --val-per-class/--val-fraction")
        labeled = items[0].class_name is not None
        if val_per_class and not labeled:
            raise DataPrepError("--val-per-class needs labels; for unlabeled images use --val-fraction")
        groups: dict[str | None, list[Item]] = {}
        for item in splits["train"]:
            groups.setdefault(item.class_name, []).append(item)
        train, val = [], []
        for name in sorted(groups, key=str):
            group = groups[name]
            k = val_per_class or max(1, round(val_fraction * len(group)))
            if k >= len(group):
                what = f"class {name!r}" if labeled else "the folder"
                raise DataPrepError(f"{what} has {len(group)} usable image(s): a val split of {k} leaves none for "
                                    f"training; lower --val-per-class/--val-fraction")
            order = rng.permutation(len(group))
            val += [group[i] for i in order[:k]]
            train += [group[i] for i in order[k:]]
        splits["train"], splits["val"] = train, val
    # mix the classes: training streams read shards in order
    return {name: [group[i] for i in rng.permutation(len(group))]
            for name, group in sorted(splits.items(), key=lambda kv: ("train", "val", "test").index(kv[0]))}


def _stats(values: list[int]) -> dict[str, int]:
    return {"min": min(values), "median": statistics.median_low(values), "max": max(values)}


def skip_counts(skipped: list[tuple[str, str]]) -> str:
    """'2 not an image Pillow can read, 1 empty file': reasons without their details."""
    counts = Counter(reason.split(" (")[0] for _, reason in skipped)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


class ImageJob:
    """Pass 1 on construction; ``splits()`` gives the writer lazy SplitSources that run pass 2."""

    def __init__(self, items: list[Item], pool: Pool, channels: int | None, enc: dict, seed: int,
                 val_per_class: int | None, val_fraction: float | None, strict: bool, classes: list[str]):
        self.pool, self.strict, self.classes = pool, strict, classes
        self.skipped: list[tuple[str, str]] = []
        headers = list(_progress(pool.map(read_header, [i.path for i in items], 32), len(items), "reading headers"))
        usable: list[Item] = []
        found: Counter[int] = Counter()
        for item, header in zip(items, headers, strict=True):
            if isinstance(header, str):
                self._skip(item, header)
            else:
                usable.append(item)
                found[header.channels] += 1
        self._check_classes(items, usable, "")
        # the majority; a tie goes to colour (grayscale converts to RGB without loss)
        self.channels = channels or (1 if found[1] > found[3] else 3)
        if enc["format"] == "jpg" and self.channels == 1:
            raise DataPrepError("--format jpg stores colour: the reader decodes JPEG as 3 channels; for grayscale "
                                "images use --format png (or keep), or --channels 3")
        self.encoding = Encoding(channels=self.channels, **enc)
        self.items = assign_splits(usable, val_per_class, val_fraction, np.random.default_rng(seed))

    def _skip(self, item: Item, reason: str) -> None:
        if self.strict:
            raise DataPrepError(f"{item.path}: {reason} (--strict stops at the first file that cannot be used)")
        self.skipped.append((item.source_id, reason))

    def _check_classes(self, before: list[Item], after: list[Item], where: str) -> None:
        left = Counter(i.class_name for i in after)
        for name in class_order(i.class_name for i in before if i.class_name is not None):
            if not left[name]:
                first = next(r for s, r in self.skipped if s in {i.source_id for i in before if i.class_name == name})
                raise DataPrepError(f"class {name!r}{where} has no usable image (e.g. {first}): add readable images "
                                    f"to its folder or remove it")

    def splits(self) -> dict[str, SplitSource]:
        return {name: self._split(name, items) for name, items in self.items.items()}

    def _split(self, name: str, items: list[Item]) -> SplitSource:
        stats = {"w": [], "h": [], "kept": 0}
        index = {n: i for i, n in enumerate(self.classes)}

        def samples() -> Iterator[Sample]:
            done: list[Item] = []
            results = self.pool.map(convert_with, [(i.path, self.encoding) for i in items])
            for item, result in zip(items, results, strict=True):
                if isinstance(result, str):
                    self._skip(item, result)
                    continue
                ext, data, w, h, kept = result
                stats["w"].append(w)
                stats["h"].append(h)
                stats["kept"] += kept
                done.append(item)
                label = None if item.class_name is None else index[item.class_name]
                yield Sample(ext, data, label, item.class_name or "", item.source_id)
            if not done:
                raise DataPrepError(f"split {name} has no usable image (e.g. {self.skipped[-1][0]}: "
                                    f"{self.skipped[-1][1]})")
            self._check_classes(items, done, f" in split {name}")

        def extra() -> dict:
            labeled = bool(self.classes)
            fields = {"labels": "cls" if labeled else "none"}
            if labeled:
                fields["classes"] = index
            return fields | {"channels": self.channels, "width": _stats(stats["w"]), "height": _stats(stats["h"]),
                             "kept_original": stats["kept"]}

        return SplitSource(len(items), samples(), exact=False, extra=extra)

    def finish(self, manifest: dict) -> dict[str, bytes]:
        self.skipped.sort()
        manifest["skipped"] = len(self.skipped)
        files = {"skipped.txt": "".join(f"{s}\t{r}\n" for s, r in self.skipped).encode()}
        if self.classes:
            files["classes.json"] = (json.dumps({n: i for i, n in enumerate(self.classes)}, indent=2) + "\n").encode()
        return files


def _progress(results: Iterator, total: int, desc: str) -> Iterator:
    from tqdm import tqdm

    return tqdm(results, total=total, desc=desc, unit="img", disable=None, leave=False)


def plan(src: Path, unlabeled: bool) -> tuple[list[Item], dict, list[str]]:
    """-> (items, source description, class names) from the listing alone (no image is opened)."""
    items, layout = find_items(src, unlabeled)
    labeled = [i.class_name is not None for i in items]
    if any(labeled) and not all(labeled):
        raise DataPrepError(f"{src}: some rows have a label and some do not")
    classes = class_order(i.class_name for i in items if i.class_name is not None)
    if len(classes) == 1:
        raise DataPrepError(f"{src}: one class ({classes[0]}) is no classification: add class folders, or pass "
                            f"--unlabeled for pretraining images")
    source = {"kind": layout, "path": str(src.resolve()), "files": len(items), "listing_sha256": listing_sha256(items)}
    if layout == "list":
        source["sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
    return items, source, classes


# ---------------------------------------------------------------- command line


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must lie between 1 and 100, got {value}")
    return value


def add_parser(sub, positive) -> None:
    p = sub.add_parser("images", help="your own images: an ImageFolder tree, a folder of unlabeled images, "
                                      "or a CSV/TSV list file (path[,label][,split])")
    p.add_argument("src", type=Path, help="folder (SRC/<class>/..., SRC/train/<class>/..., or just images) "
                                          "or a .csv/.tsv list file")
    p.add_argument("--out", required=True, type=Path, help="output directory for shards + manifest.json")
    p.add_argument("--unlabeled", action="store_true",
                   help="no labels even when SRC has subfolders (they are then just folders of images)")
    p.add_argument("--size", type=positive, metavar="N", help="resize the shorter side to N and keep the centre N x N "
                                                 "(what training reads today: every image the same size)")
    p.add_argument("--max-side", type=positive, metavar="N", help="resize so the longer side is at most N (aspect kept)")
    p.add_argument("--format", choices=("keep", "jpg", "png"), default="keep",
                   help="keep: original bytes when possible, else JPEG for JPEG sources and PNG for the rest")
    p.add_argument("--quality", type=_quality, default=95, metavar="1..100",
                   help="JPEG quality of re-encoded images (default 95)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB); default: the "
                                                                 "majority of the images")
    p.add_argument("--val-per-class", type=positive, metavar="N", help="when SRC has no val split: N images per class")
    p.add_argument("--val-fraction", type=_fraction, metavar="F", help="when SRC has no val split: this fraction "
                                                          "(of each class)")
    p.add_argument("--seed", type=int, default=0, help="val selection and sample order")
    p.add_argument("--shard-max-count", type=positive, metavar="N", default=10_000, help="samples per shard at most")
    p.add_argument("--shard-max-bytes", type=positive, metavar="N", default=256 * 1024**2, help="bytes per shard at most")
    p.add_argument("--workers", type=positive, metavar="N", default=1, help="processes decoding and encoding (the output "
                                                              "is the same for any number)")
    p.add_argument("--strict", action="store_true", help="any file that cannot be used is an error")


def run(args: argparse.Namespace, command: str) -> str:
    if args.max_side and args.size:
        raise DataPrepError("--size N already fixes every image to N x N: drop --max-side")
    if args.val_per_class and args.val_fraction:
        raise DataPrepError("give --val-per-class or --val-fraction, not both")
    if args.src.is_dir() and args.out.resolve().is_relative_to(args.src.resolve()):
        raise DataPrepError(f"--out {args.out} lies inside {args.src}: its shards would become input of the next "
                            f"run; write them elsewhere")
    items, source, classes = plan(args.src, args.unlabeled)
    enc = {"max_side": args.max_side, "size": args.size, "format": args.format, "quality": args.quality}
    options = {"channels": args.channels or "majority", **enc, "val_per_class": args.val_per_class,
               "val_fraction": args.val_fraction, "seed": args.seed, "shard_max_count": args.shard_max_count,
               "shard_max_bytes": args.shard_max_bytes}
    head = {"dataset": "images", "source": source, "options": options, "classes": classes, "command": command}
    if is_up_to_date(args.out, {"format_version": FORMAT_VERSION, **head}):
        return f"up to date: {args.out} ({summary(read_manifest(args.out), args.out).splitlines()[0]})"
    pool = Pool(args.workers)
    try:
        job = ImageJob(items, pool, args.channels, enc, args.seed, args.val_per_class, args.val_fraction,
                       args.strict, classes)
        manifest, _ = write_dataset(args.out, head, job.splits(), shard_max_count=args.shard_max_count,
                                    shard_max_bytes=args.shard_max_bytes, finish=job.finish)
    finally:
        pool.close()
    text = summary(manifest, args.out)
    if job.skipped:  # what the files were, on the line that says where they are listed
        text = text.replace(" file(s), listed", f" file(s) ({skip_counts(job.skipped)}), listed")
    return text
