"""Deterministic, atomic shard + manifest writing.

Every file is first written as ``.tmp-<name>`` and renamed into place only after all splits were
written; the old manifest is removed before the first rename and the new one is written last, so a
directory without ``manifest.json`` is always an incomplete one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from data_prep.errors import DataPrepError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
SHARD_RE = re.compile(r"^(?P<split>[a-z_]+)-\d{6}\.tar$")
# Manifest fields that identify the content; "command" is left out so that spelling the same
# options differently still counts as up to date.
IDENTITY_KEYS = ("format_version", "dataset", "source", "options", "image", "classes")
# Files some datasets keep beside the manifest; committed with it, removed when a re-run has none.
SIDE_FILES = ("classes.json", "skipped.txt")


@dataclass(frozen=True)
class Sample:
    ext: str  # "png" or "jpg"
    data: bytes
    label: int | None  # None: a label-free sample (no .cls member)
    class_name: str
    source_id: str


@dataclass(frozen=True)
class SplitSource:
    count: int  # the samples to come; with exact=False at most this many (bad files are dropped)
    samples: Iterable[Sample]  # in final order; may be lazy (read on demand)
    exact: bool = True
    # more fields of the split's manifest entry, computed once its samples were written
    extra: Callable[[], dict] | None = None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata so the tar bytes depend only on the content.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _sample_bytes(sample: Sample, meta: bytes) -> int:
    sizes = [len(sample.data), len(meta)] + ([] if sample.label is None else [len(str(sample.label))])
    return 512 * (len(sizes) + sum(-(-n // 512) for n in sizes))


def _tar_size(members_end: int) -> int:
    """File size once closed: two zero blocks, padded to tarfile's 10 KiB record."""
    return -(-(members_end + 2 * 512) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _ShardSink:
    """Writes one split as ``<split>-NNNNNN.tar`` temp files, rolling over at the limits."""

    def __init__(self, out: Path, split: str, max_count: int, max_bytes: int):
        self.out, self.split = out, split
        self.max_count, self.max_bytes = max_count, max_bytes
        self.shards: list[dict] = []
        self.temp_files: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        path = self.out / (TMP_PREFIX + name)
        self.temp_files.append(path)
        self._file = open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.shards.append({"name": name, "count": 0, "bytes": 0, "sha256": ""})
        self._count = 0

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._file.close()
        self._tar = None
        path = self.temp_files[-1]
        self.shards[-1].update(count=self._count, bytes=path.stat().st_size, sha256=sha256_file(path))

    def add(self, key: str, sample: Sample, meta: bytes) -> None:
        size = _sample_bytes(sample, meta)
        if self._tar is not None and (
            self._count >= self.max_count or _tar_size(self._file.tell() + size) > self.max_bytes
        ):
            self.close_shard()
        if self._tar is None:
            self._open()
        _add_member(self._tar, f"{key}.{sample.ext}", sample.data)
        if sample.label is not None:
            _add_member(self._tar, f"{key}.cls", str(sample.label).encode())
        _add_member(self._tar, f"{key}.json", meta)
        self._count += 1


def _write_split(out: Path, split: str, source: SplitSource, classes: list[str], limits: tuple[int, int],
                 temp_files: list[Path]) -> dict:
    sink = _ShardSink(out, split, *limits)
    per_class: Counter[str] = Counter()
    try:
        bar = tqdm(source.samples, total=source.count, desc=f"{split} shards", unit="img",
                   disable=None, leave=False)
        count = 0
        for index, sample in enumerate(bar):
            meta = {"index": index, "label": sample.label, "class_name": sample.class_name,
                    "source_id": sample.source_id}
            if sample.label is None:
                meta = {"index": index, "source_id": sample.source_id}
            else:
                per_class[sample.class_name] += 1
            sink.add(f"{split}-{index:07d}", sample, json.dumps(meta, sort_keys=True).encode())
            count += 1
        sink.close_shard()
    finally:
        temp_files.extend(sink.temp_files)
    if count != source.count and (source.exact or count > source.count):
        raise DataPrepError(f"internal: split {split!r} produced {count} samples, expected {source.count}")
    # Names outside `classes` occur in the label-free split (its images keep their true digit here).
    extra = {name: n for name, n in sorted(per_class.items()) if name not in classes}
    entry = {"count": count, "per_class": {name: per_class[name] for name in classes} | extra,
             "shards": sink.shards}
    return entry | (source.extra() if source.extra else {})


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(out: Path, head: dict) -> bool:
    """True when ``out`` holds a manifest with the same identity and every shard checksum matches."""
    old = read_manifest(out)
    if old is None or any(old.get(k) != head.get(k) for k in IDENTITY_KEYS):
        return False
    for split in old.get("splits", {}).values():
        for shard in split["shards"]:
            path = out / shard["name"]
            if not path.is_file() or path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
                return False
    return True


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(TMP_PREFIX + path.name)
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _commit(out: Path, manifest: dict, side: dict[str, bytes]) -> None:
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end the directory is "incomplete"
    names = [s["name"] for split in manifest["splits"].values() for s in split["shards"]]
    for name in [*names, *side]:
        os.replace(out / (TMP_PREFIX + name), out / name)
    for name in SIDE_FILES:
        if name not in side:
            (out / name).unlink(missing_ok=True)
    _write_json_atomic(out / MANIFEST, manifest)
    keep = set(names)
    for path in out.iterdir():
        if SHARD_RE.match(path.name) and path.name not in keep:
            path.unlink()


def write_dataset(out: Path, head: dict, splits: dict[str, SplitSource], *,
                  shard_max_count: int, shard_max_bytes: int,
                  finish: Callable[[dict], dict[str, bytes]] | None = None) -> tuple[dict, bool]:
    """Write shards + manifest for ``splits`` into ``out``.

    ``head`` holds every manifest field except "splits". ``finish(manifest)``, called once every
    split is written, may add manifest fields and returns files (one of SIDE_FILES -> bytes) to
    commit beside the manifest. Returns (manifest, written); written is False when ``out`` was
    already up to date and nothing was touched.
    """
    head = {"format_version": FORMAT_VERSION, **head}
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"--out {out} is an existing file, not a directory: pass a directory path")
    if is_up_to_date(out, head):
        return read_manifest(out), False
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(TMP_PREFIX + "*"):  # left by a killed run; never part of a complete dataset
            stale.unlink()
    except OSError as err:
        raise DataPrepError(f"--out {out}: cannot write there ({err.strerror}): pass a directory you can write to") from None
    temp_files: list[Path] = []
    try:
        manifest = dict(head, splits={})
        for split, source in splits.items():
            manifest["splits"][split] = _write_split(
                out, split, source, head["classes"], (shard_max_count, shard_max_bytes), temp_files)
        side = finish(manifest) if finish else {}
        for name, data in side.items():
            temp_files.append(out / (TMP_PREFIX + name))
            temp_files[-1].write_bytes(data)
        _commit(out, manifest, side)
    except BaseException as err:
        for path in temp_files:
            path.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        if isinstance(err, OSError):  # disk full, permissions changed under us: nothing was kept
            raise DataPrepError(f"writing shards into {out} failed ({err.strerror or err}); "
                                "nothing was kept: free space or fix permissions and run again") from None
        raise
    return manifest, True


def _split_images(info: dict) -> str:
    """The optional per-split image fields (labels, channels, width/height), as one phrase."""
    parts = []
    if "labels" in info:
        parts.append("no labels" if info["labels"] == "none" else f"labels: {len(info.get('classes', {}))} classes")
    if "channels" in info:
        parts.append(f"{info['channels']} channel(s)")
    if "width" in info and "height" in info:
        w, h = info["width"], info["height"]
        if w["min"] == w["max"] and h["min"] == h["max"]:
            parts.append(f"all {w['min']}x{h['min']}")
        else:
            parts.append(f"width {w['min']}/{w['median']}/{w['max']}, height {h['min']}/{h['median']}/{h['max']} "
                         f"(min/median/max)")
    return "; ".join(parts)


def summary(manifest: dict, out: Path) -> str:
    classes = manifest.get("classes")
    head = f"{manifest['dataset']} shards in {out}: {f'{len(classes)} classes' if classes else 'no classes'}"
    image = manifest.get("image")
    if image:
        head += f", image {image['height']}x{image['width']}x{image['channels']} {image['format']}"
    lines = [head]
    for split, info in manifest["splits"].items():
        per_class = ", ".join(f"{name}: {n}" for name, n in info["per_class"].items())
        if len(info["per_class"]) > 12:
            counts = sorted(set(info["per_class"].values()))
            per_class = f"{len(info['per_class'])} classes, {counts[0]}..{counts[-1]} per class"
        line = f"  {split}: {info['count']} images in {len(info['shards'])} shard(s)"
        line += f" ({per_class})" if per_class else ""
        if _split_images(info):
            line += f"; {_split_images(info)}"
        lines.append(line)
    if manifest.get("skipped"):
        lines.append(f"  skipped: {manifest['skipped']} file(s), listed in {out / 'skipped.txt'}")
    return "\n".join(lines)
