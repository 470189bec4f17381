"""``python -m data_prep index <shard urls> --out <folder>``: a manifest for shards made elsewhere.

Reads every shard once (local paths, ``file://``, ``http(s)://``, ``pipe:`` commands; brace patterns
expanded) and writes ``<folder>/manifest.json`` with each shard's sample count, bytes and sha256,
grouped into splits by the shard names (``<split>-NNNNNN.tar``) or all into ``--split``, and whether
a split has labels (``labels: none`` when a shard's first sample has no ``.cls``). Training
from that folder then has the counts the exact-once epoch plan needs without reading the shards
first, and checks every shard's size and sha256 as it streams.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from data_prep.errors import DataPrepError
from data_prep.writer import FORMAT_VERSION, MANIFEST, _write_json_atomic


def _name(url: str, out: Path) -> str:
    """Relative to ``out`` for a local file inside it, else the URL (an absolute path for local files)."""
    from vitssl.data.sources import local_path

    path = local_path(url)
    if path is None:
        return url
    path = os.path.abspath(path)
    return os.path.relpath(path, out.resolve()) if path.startswith(str(out.resolve()) + os.sep) else path


def _has_label(shard) -> bool:
    from vitssl.data import DataError
    from vitssl.data.tar_stream import read_shard

    try:
        _, first = next(read_shard(shard, stop=1, verify=False))
    except DataError as err:
        raise DataPrepError(str(err)) from None
    return "cls" in first


def index(urls: list[str], out: Path, split: str | None, command: str) -> dict:
    from vitssl.data import DataError
    from vitssl.data.sources import Shard, expand, split_of
    from vitssl.data.tar_stream import scan_shard

    expanded = [u for spec in urls for u in expand(spec)]
    if not expanded:
        raise DataPrepError("no shard URLs given")
    splits: dict[str, dict] = {}
    for url in tqdm(expanded, desc="index", unit="shard", disable=None, leave=False):
        name = split or split_of(url)
        if name is None:
            raise DataPrepError(f"{url}: cannot tell its split from the name (expected <split>-NNNNNN.tar): "
                                f"pass --split")
        try:
            count, size, sha = scan_shard(url)
        except DataError as err:
            raise DataPrepError(str(err)) from None
        entry = splits.setdefault(name, {"count": 0, "shards": [], "labels": "cls"})
        entry["count"] += count
        entry["shards"].append({"name": _name(url, out), "count": count, "bytes": size, "sha256": sha})
        if count and not _has_label(Shard(url, count, size, sha)):
            entry["labels"] = "none"
    manifest = {"format_version": FORMAT_VERSION, "dataset": "index", "command": command, "splits": splits}
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / MANIFEST, manifest)
    return manifest


def index_summary(manifest: dict, out: Path) -> str:
    lines = [f"indexed shards, manifest {out / MANIFEST}:"]
    lines += [f"  {split}: {info['count']} samples in {len(info['shards'])} shard(s)"
              + ("; no labels" if info.get("labels") == "none" else "")
              for split, info in manifest["splits"].items()]
    return "\n".join(lines)
