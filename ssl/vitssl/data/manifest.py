"""Read ``manifest.json`` written by ``python -m data_prep`` and check shards against it.

Every manifest, from a folder or a server, is validated by one typed schema (``Manifest``) before
anything uses it: a missing key, a count written as text, split totals that disagree with their
shards, or a shard name that leaves the manifest's base are one error line naming the file, the key
and what was expected. A manifest is data from outside the user's config, so a shard ``name`` is a
relative path under the manifest's folder (``a/train-000000.tar``, no ``..``); a manifest in a
local folder may also name shards elsewhere by absolute path or ``http(s)://`` URL (what
``python -m data_prep index`` writes), never by a ``pipe:`` command or another scheme.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class DataError(ValueError):
    """Shards are missing, corrupt or do not fit the request; the message says how to fix it."""


class _Strict(BaseModel):
    # strict: a count written as "250" is an error, not silently converted
    model_config = ConfigDict(extra="forbid", strict=True)


class ShardEntry(_Strict):
    name: str = Field(min_length=1)
    count: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _under_the_base(cls, name: str, info: ValidationInfo) -> str:
        remote = bool((info.context or {}).get("remote"))
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", name)
        elsewhere = (scheme is not None and len(scheme.group(1)) > 1) or name.startswith(("/", "\\"))
        if not remote and (name.startswith("/") or re.match(r"^https?://", name, re.IGNORECASE)):
            return name  # a local manifest naming shards elsewhere (data_prep index)
        if elsewhere or ".." in PurePosixPath(name.replace("\\", "/")).parts:
            raise ValueError("must be a relative path under the manifest's folder (no scheme such as pipe: or "
                             "http:, no absolute path, no ..); shards elsewhere or made by a command belong "
                             "in data.shards itself")
        return name


class SizeRange(_Strict):
    min: int = Field(ge=1)
    median: int = Field(ge=1)
    max: int = Field(ge=1)


class SplitEntry(_Strict):
    count: int = Field(ge=0)
    shards: list[ShardEntry]
    per_class: dict[str, int] | None = None
    # what a folder of the user's own images records (all optional; data_prep index writes labels)
    labels: Literal["cls", "none"] | None = None
    classes: dict[str, int] | None = None
    channels: int | None = Field(None, ge=1)
    width: SizeRange | None = None
    height: SizeRange | None = None
    kept_original: int | None = Field(None, ge=0)  # images stored as given, not re-encoded

    @model_validator(mode="after")
    def _total(self) -> SplitEntry:
        total = sum(s.count for s in self.shards)
        if total != self.count:
            raise ValueError(f"count {self.count} differs from the sum over its shards ({total})")
        return self


class Manifest(_Strict):
    # other top-level keys describe the data (a writer's own, such as Tiny ImageNet's wnids) and are
    # never read here: allowed. Splits and shards, which the readers act on, allow no unknown key.
    model_config = ConfigDict(extra="allow", strict=True)

    splits: dict[str, SplitEntry]
    format_version: int | None = None
    dataset: str | None = None
    command: str | None = None
    source: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    classes: list[str] | None = None
    options: dict[str, Any] | None = None
    skipped: int | None = Field(None, ge=0)  # input files data_prep images could not use


def _expected(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "missing":
        return "missing (required)"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    got = repr(error["input"])
    return f"{msg[0].lower()}{msg[1:]} (got {got[:60]})"


def check_manifest(raw: Any, where: str, remote: bool) -> dict:
    """``raw`` (parsed JSON) if it is a valid manifest, else one DataError naming ``where``, the key and
    what was expected. ``remote``: read from a server (shard names must then be relative)."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object with \"splits\", got a JSON {type(raw).__name__}: "
                        f"re-run python -m data_prep (or data_prep index)")
    try:
        Manifest.model_validate(raw, context={"remote": remote})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "<top level>"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise DataError(f"{where}: {key}: {_expected(first)}{more}: re-run python -m data_prep (or data_prep "
                        f"index) to write a valid manifest") from None
    return raw


# Shards already verified in this process: (path, size, mtime_ns, sha256, count).
_VERIFIED: set[tuple] = set()


def load_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no manifest.json in {shard_dir}: run `python -m data_prep mnist --out {shard_dir}` "
                        f"first (an interrupted data_prep run leaves no manifest); for shards made elsewhere, "
                        f"`python -m data_prep index '{shard_dir}/train-{{000000..000009}}.tar' --out {shard_dir}` "
                        f"or list them in data.shards") from None
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable {path} ({err}): re-run `python -m data_prep` for {shard_dir}") from None
    return check_manifest(raw, str(path), remote=False)


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
