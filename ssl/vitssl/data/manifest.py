"""Read ``manifest.json`` written by ``python -m data_prep`` and check shards against it."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path


class DataError(ValueError):
    """Shards are missing, corrupt or do not fit the request; the message says how to fix it."""


# Shards already verified in this process: (path, size, mtime_ns, sha256, count).
_VERIFIED: set[tuple] = set()


def load_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no manifest.json in {shard_dir}: run `python -m data_prep mnist --out {shard_dir}` "
                        f"first (an interrupted data_prep run leaves no manifest); for shards made elsewhere, "
                        f"`python -m data_prep index '{shard_dir}/train-{{000000..000009}}.tar' --out {shard_dir}` "
                        f"or list them in data.shards") from None
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable {path} ({err}): re-run `python -m data_prep` for {shard_dir}") from None


def split_info(manifest: dict, split: str, shard_dir: str | Path) -> dict:
    try:
        return manifest["splits"][split]
    except KeyError:
        raise DataError(f"{shard_dir} has no split {split!r} (splits: {sorted(manifest['splits'])})") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def count_samples(path: Path) -> int:
    with tarfile.open(path, "r:") as tar:
        return len({m.name.partition(".")[0] for m in tar})


def verify_split(shard_dir: str | Path, split: str, manifest: dict, check_sha: bool = True) -> None:
    """Every shard of ``split`` exists with the manifest's size; with ``check_sha`` also its sha256 and
    sample count (checked once per process and file version)."""
    info = split_info(manifest, split, shard_dir)
    fix = f"re-run the data_prep command in {Path(shard_dir) / 'manifest.json'} (\"command\")"
    for shard in info["shards"]:
        path = Path(shard_dir) / shard["name"]
        if not path.is_file():
            raise DataError(f"shard {path} is missing: {fix}")
        stat = path.stat()
        if stat.st_size != shard["bytes"]:
            raise DataError(f"shard {path} has {stat.st_size} bytes, manifest says {shard['bytes']}: {fix}")
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, shard["sha256"], shard["count"])
        if not check_sha or key in _VERIFIED:
            continue
        if file_sha256(path) != shard["sha256"]:
            raise DataError(f"shard {path} is corrupt (sha256 differs from the manifest): {fix}")
        if count_samples(path) != shard["count"]:
            raise DataError(f"shard {path} holds a different number of samples than the manifest's "
                            f"{shard['count']}: {fix}")
        _VERIFIED.add(key)
    if sum(s["count"] for s in info["shards"]) != info["count"]:
        raise DataError(f"{split} count {info['count']} in {shard_dir}/manifest.json differs from the sum over "
                        f"its shards: {fix}")
