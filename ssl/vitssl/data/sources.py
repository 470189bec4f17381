"""Where a split's shards are: ``data.shards`` as a webdataset user writes it.

- a local folder holding ``manifest.json`` (what ``python -m data_prep`` writes);
- a base URL holding ``manifest.json``: ``http(s)://host/mnist012``, ``file:///data/mnist012``;
- explicit shard URLs, brace-expanded: ``http://host/d/train-{000000..000009}.tar``,
  ``pipe:aws s3 cp s3://bucket/d/train-{000000..000009}.tar -``. Other schemes (``gs://``, ``s3://``)
  are refused with the ``pipe:`` form to use instead (``fetch.check_scheme``). A URL list carries no counts: they
  are counted by one read of every shard per process (``python -m data_prep index`` writes a
  manifest once instead). The split is picked from the shard names (``<split>-NNNNNN.tar``).

Only ``data.shards`` itself may be a ``pipe:`` command or carry a scheme: it is the user's own input.
A manifest's shard ``name`` is relative to the manifest's folder; a local manifest may also name
shards elsewhere by absolute path or http(s) URL (as ``index`` writes), see ``manifest``. Local shards are checked against the manifest's size and sha256 before
training (once per process and file version); remote ones as they stream (see ``tar_stream``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

import braceexpand

from vitssl.data.fetch import check_scheme
from vitssl.data.manifest import DataError, check_manifest, load_manifest, split_info, verify_split
from vitssl.data.shard import Shard, local_path
from vitssl.data.tar_stream import read_url, scan_shard
from vitssl.redaction import redact_spec


def is_url_list(spec: str) -> bool:
    return spec.startswith("pipe:") or "{" in spec or spec.rstrip().endswith(".tar")


def expand(spec: str) -> list[str]:
    """``a-{000..002}.tar`` -> three URLs; several patterns may be separated by whitespace-free ``::``."""
    return [url for part in spec.split("::") for url in braceexpand.braceexpand(part)]


def _join(base: str, name: str) -> str:
    """``name`` under ``base``; a query (a signed URL's token) stays at the end."""
    if urlparse(name).scheme or name.startswith("/"):
        return name
    if local_path(base) is not None:
        return f"{base.rstrip('/')}/{name}"
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def _remote_manifest(base: str) -> dict:
    check_scheme(base)  # before the read: its error would only say "no manifest.json"
    url = _join(base, "manifest.json")
    try:
        text = read_url(url)
    except DataError as err:
        shown = redact_spec(base)
        raise DataError(f"no manifest.json at {shown} ({err}): list the shards instead "
                        f"({shown}/train-{{000000..000009}}.tar) or write one with "
                        f"`python -m data_prep index <shard urls> --out <folder>`") from None
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise DataError(f"{redact_spec(url)} is not JSON ({err}): expected the manifest.json written by "
                        f"python -m data_prep") from None
    return check_manifest(raw, redact_spec(url), remote=True)


def split_of(url: str) -> str | None:
    match = re.search(r"(?:^|[/\s:])([A-Za-z0-9_]+)-\d+\.tar(?:\?\S*)?(?:\s|$)", url)
    return match.group(1) if match else None


# Counts of URL-list shards read once in this process: url -> (count, bytes, sha256).
_COUNTED: dict[str, tuple[int, int, str]] = {}


def _counted(url: str) -> Shard:
    if url not in _COUNTED:
        _COUNTED[url] = scan_shard(url)
    count, size, sha = _COUNTED[url]
    return Shard(url, count, size, sha)


def split_shards(spec: str | Path, split: str, check_sha: bool = True) -> list[Shard]:
    """The shards of ``split`` in manifest (or URL-list) order, with their counts."""
    spec = str(spec)
    if is_url_list(spec):
        for pattern in spec.split("::"):
            check_scheme(pattern)
        urls = expand(spec)
        chosen = [u for u in urls if split_of(u) == split]
        if not chosen:
            found = sorted({s for s in map(split_of, urls) if s})
            raise DataError(f"none of the {len(urls)} shard URLs in {redact_spec(spec)!r} is named {split}-NNNNNN.tar "
                            f"(splits found: {found or 'none'}): name the shards <split>-NNNNNN.tar or write a "
                            f"manifest with `python -m data_prep index`")
        return [_counted(u) for u in chosen]
    if local_path(spec) is not None:
        folder = local_path(spec)
        manifest = load_manifest(folder)
        if all(local_path(s["name"]) is not None for s in split_info(manifest, split, folder)["shards"]):
            verify_split(folder, split, manifest, check_sha=check_sha)
        base = folder
    else:
        manifest, base = _remote_manifest(spec), spec
    info = split_info(manifest, split, redact_spec(spec))
    return [Shard(_join(base, s["name"]), s["count"], s.get("bytes"), s.get("sha256")) for s in info["shards"]]


def source_manifest(spec: str | Path, splits: list[str]) -> dict:
    """The manifest behind any ``data.shards``; for a URL list, one made from the counts and sha256s read
    (covering ``splits``)."""
    spec = str(spec)
    if is_url_list(spec):
        return {"dataset": "shard URLs", "command": spec, "splits": {
            split: {"count": sum(s.count for s in shards),
                    "shards": [{"name": s.url, "count": s.count, "bytes": s.bytes, "sha256": s.sha256}
                               for s in shards]}
            for split in splits for shards in [split_shards(spec, split)]}}
    if local_path(spec) is not None:
        return load_manifest(local_path(spec))
    return _remote_manifest(spec)
