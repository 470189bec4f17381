"""One shard as the readers see it: where it is and what its manifest promises.

A leaf module: ``sources`` (which shards a split has) and ``tar_stream`` (reading one) both use it
and neither imports the other's callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse
from urllib.request import url2pathname


@dataclass(frozen=True)
class Shard:
    url: str  # a local path, file://, http(s):// or a pipe: command
    count: int
    bytes: int | None = None  # None: not known (a URL list counted by reading)
    sha256: str | None = None

    @property
    def local(self) -> bool:
        return local_path(self.url) is not None


def local_path(url: str) -> str | None:
    """The file a URL names on this machine, or None for remote and ``pipe:`` URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):  # a Windows drive
        return url
    return None
