"""Samples of one shard, from a local file, an http(s) URL or a ``pipe:`` command.

Remote shards (``http(s)://``, ``pipe:``) are opened by ``fetch`` (curl with a low-speed limit, a
deadline and retries; a command in its own process group, watched with the same bounds) and read by
webdataset's tar iterator (Python's streaming tarfile: ustar, PAX and GNU headers alike). A read that covers the end of a
remote shard goes on to its last byte, so the number of samples, the size and the sha256 are
checked against the manifest from the bytes that stream past: a shard that holds more or other
samples than its manifest is an error, never a short epoch, and nothing is downloaded twice.

Local files take a fast path that reads tar headers itself and seeks over samples it does not need:
1.8-2.0x the training loader's throughput through webdataset's iterator on the same files (MNIST
PNGs, 64x64 JPEGs; BENCHMARKS.md, "Loader throughput"). It reads the same PAX and GNU long-name headers.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from typing import BinaryIO, Callable, Iterator

from webdataset.tariterators import base_plus_ext, tar_file_iterator

from vitssl.data.fetch import ReadFailed, open_stream
from vitssl.data.manifest import DataError, file_sha256
from vitssl.data.shard import Shard, local_path
from vitssl.redaction import redact_spec

Members = Iterator[tuple[str, Callable[[], bytes]]]  # (member name, read its data) in tar order
# Byte offset of every sample of a local shard, per (path, size, mtime): lets a reader start mid-shard.
_OFFSETS: dict[tuple[str, int, int], list[int]] = {}


def open_url(url: str) -> BinaryIO:
    """A readable stream of an http(s) or ``pipe:`` URL, bounded (see ``fetch``); other schemes are refused."""
    return open_stream(url)


def _close(stream: BinaryIO | None) -> None:
    """Close a stream; a transfer or command still running is ended, not waited for."""
    if stream is None:
        return
    try:
        stream.close()
    except OSError:
        pass  # a command stopped early reports it: expected


def explain(url: str, err: BaseException) -> str:
    """What went wrong reading ``url``, in words (never the URL itself: the caller names it redacted)."""
    said = str(err).split(" @ ")[0]  # webdataset's tar iterator appends " @ <the stream object>"
    if isinstance(err, ReadFailed):
        return said
    if isinstance(err, (tarfile.TarError, EOFError)):
        return f"not a complete tar stream ({said})"
    return f"{type(err).__name__}: {redact_spec(str(err))}"


def where(url: str) -> str:
    return redact_spec(url)


def read_url(url: str) -> bytes:
    """All bytes of ``url`` (a small file such as a manifest)."""
    path = local_path(url)
    try:
        if path is not None:
            with open(path, "rb") as f:
                return f.read()
        stream = open_url(url)
        try:
            return stream.read()
        finally:
            _close(stream)
    except OSError as err:
        raise DataError(explain(url, err)) from None


class _Counting:
    """A read-only stream that hashes and counts the bytes passing through."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.sha, self.bytes, self.tail = stream, hashlib.sha256(), 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        self.tail = (self.tail + data)[-512:]
        return data

    def drain(self) -> None:
        """Reads to the end; a stream cut at a member boundary passes tarfile unnoticed, so check that it
        ends the way every tar writer ends it: whole 512-byte blocks, the last one zeros."""
        while self.read(1 << 16):
            pass
        if self.bytes % 512 or self.tail != bytes(512):
            raise tarfile.ReadError(f"cut off after {self.bytes} bytes")


def _remote_members(stream: _Counting) -> Members:
    for member in tar_file_iterator(stream, skip_meta=None):
        yield member["fname"], (lambda data=member["data"]: data)


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """``"%d %s=%s\\n"`` records of a PAX extended header."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key], pos = value, pos + length
    return records


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _local_members(f: BinaryIO, starts: list[int] | None = None) -> Members:
    """Regular members of a local tar. Reads the headers only; a member's data is read if its reader
    is called before the next member is asked for, else seeked over. ``starts`` collects the offset
    of each member's first header block."""
    long_name, pax, first = None, {}, f.tell()
    while (header := f.read(512))[:1] not in (b"", b"\0"):  # a zero block ends the archive
        if len(header) != 512:
            break
        kind = header[156:157]
        size = int(pax[b"size"]) if b"size" in pax else _octal(header[124:136])
        padded = -(-size // 512) * 512
        if kind in (b"x", b"L"):  # per-member PAX records / GNU long name: apply to the next member
            data = f.read(padded)[:size]
            pax, long_name = (_pax_records(data), long_name) if kind == b"x" else (pax, data.rstrip(b"\0"))
            continue
        name = pax.get(b"path") or long_name or header[:100].split(b"\0", 1)[0]
        if not (pax.get(b"path") or long_name) and header[257:262] == b"ustar" and header[345]:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name  # ustar prefix field
        long_name, pax = None, {}
        start = f.tell()
        if kind in (b"0", b"\0", b"7"):  # regular files; global PAX ('g'), links, directories skipped
            if starts is not None:
                starts.append(first)
            yield name.decode("utf-8", "replace"), (lambda n=size: _read_exactly(f, n))
        f.seek(start + padded)
        first = f.tell()
    if len(header) != 512:
        raise tarfile.ReadError(f"cut off after {f.tell()} bytes")


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise tarfile.ReadError(f"cut off after {f.tell()} bytes")
    return data


def _sample_key(name: str) -> str | None:
    """The webdataset key of a member (``base_plus_ext``), None for members that belong to no sample."""
    key, _ = base_plus_ext(name)
    return None if key is None or name.rsplit("/", 1)[-1].startswith("__") else key


def sample_offsets(path: str) -> list[int]:
    """Byte offset of each sample's first header in a local shard (one pass over the headers, cached)."""
    stat = os.stat(path)
    cache_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _OFFSETS:
        starts: list[int] = []
        offsets, key = [], None
        with open(path, "rb") as f:
            for name, _ in _local_members(f, starts):
                member_key = _sample_key(name)
                if member_key is not None and member_key != key:
                    offsets.append(starts[-1])
                    key = member_key
        _OFFSETS[cache_key] = offsets
    return _OFFSETS[cache_key]


def _samples(members: Members, want: Callable[[int], bool], first: int = 0) -> Iterator[tuple[int, dict | None]]:
    """``(i, {"__key__", ext: bytes})`` for sample ``i`` (counted from ``first``) if ``want(i)``, else
    ``(i, None)``. Keys and extensions as webdataset splits them (``base_plus_ext``); ``.json`` metadata
    and ``__*__`` members are not kept."""
    i, key, sample = first - 1, None, None
    for name, read in members:
        member_key = _sample_key(name)
        if member_key is None:
            continue
        ext = base_plus_ext(name)[1]
        if member_key != key:
            if key is not None:
                yield i, sample
            i, key = i + 1, member_key
            sample = {"__key__": key} if want(i) else None
        if sample is not None and ext.lower() != "json":
            sample[ext.lower()] = read()
    if key is not None:
        yield i, sample


def read_shard(shard: Shard, want: Callable[[int], bool] = lambda i: True, stop: int | None = None,
               verify: bool = True, start: int = 0) -> Iterator[tuple[int, dict]]:
    """``(i, raw sample)`` for the samples of ``shard`` with ``start <= i < stop`` (default: all) and
    ``want(i)``. A local shard is entered at sample ``start``; a remote one is read from its beginning.

    One DataError naming the (redacted) URL when the source cannot be opened, fails, ends before
    ``stop``, or holds more samples than ``shard.count``. A remote read whose ``stop`` is the shard's
    end goes on to the last byte: the sample count is checked there, and the size and sha256 too
    unless ``verify`` is False.
    """
    stop = shard.count if stop is None else stop
    path = local_path(shard.url)
    to_end = path is None and stop >= shard.count  # a remote shard's end: count every sample
    stream: BinaryIO | None = None
    counting: _Counting | None = None
    n = 0
    try:
        first = 0
        if path is not None:
            stream = open(path, "rb")
            if start:
                offsets = sample_offsets(path)
                if start >= len(offsets):
                    raise DataError(_ended(shard, len(offsets)))
                first = start
                stream.seek(offsets[start])
            members = _local_members(stream)
        else:
            stream = open_url(shard.url)
            counting = _Counting(stream)
            members = _remote_members(counting)
        for i, sample in _samples(members, lambda i: start <= i < stop and want(i), first):
            n = i + 1
            if i >= stop and not to_end:
                break
            if sample is not None:
                yield i, sample
        if to_end:
            counting.drain()
    except (OSError, tarfile.TarError, EOFError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"shard {where(shard.url)}: {explain(shard.url, err)}") from None
    finally:
        _close(stream)
    if n < stop:
        raise DataError(_ended(shard, n))
    if to_end and n > shard.count:
        raise DataError(f"shard {where(shard.url)} holds {n} samples, its manifest says {shard.count}: re-run "
                        f"data_prep (or python -m data_prep index) for it")
    if to_end and verify:
        _check_bytes(shard, counting)


def _ended(shard: Shard, n: int) -> str:
    return (f"shard {where(shard.url)} ended at sample {n} of the {shard.count} in its manifest: re-run data_prep "
            f"(or python -m data_prep index) for it")


def _check_bytes(shard: Shard, counting: _Counting) -> None:
    fix = "the shard changed since its manifest was written: re-run python -m data_prep index (or data_prep)"
    if shard.bytes is not None and counting.bytes != shard.bytes:
        raise DataError(f"shard {where(shard.url)} has {counting.bytes} bytes, its manifest says {shard.bytes}: {fix}")
    if shard.sha256 and counting.sha.hexdigest() != shard.sha256:
        raise DataError(f"shard {where(shard.url)} is corrupt (sha256 differs from its manifest): {fix}")


def scan_shard(url: str) -> tuple[int, int, str]:
    """(samples, bytes, sha256) of one shard, by reading it once."""
    path = local_path(url)
    stream: BinaryIO | None = None
    try:
        if path is not None:
            with open(path, "rb") as f:
                count = sum(1 for _ in _samples(_local_members(f), lambda i: False))
            return count, os.path.getsize(path), file_sha256(path)
        stream = open_url(url)
        counting = _Counting(stream)
        count = sum(1 for _ in _samples(_remote_members(counting), lambda i: False))
        counting.drain()
        return count, counting.bytes, counting.sha.hexdigest()
    except (OSError, tarfile.TarError, EOFError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"shard {where(url)}: {explain(url, err)}") from None
    finally:
        _close(stream)
