"""Remote bytes with bounds: every http(s) read and every ``pipe:`` command has a low-speed limit and a
deadline; http(s) reads are retried.

curl fetches; it aborts a transfer slower than ``min_bytes_per_s`` for ``stall_s`` seconds (a server
that stops sending mid-body) and every transfer of one URL together gets ``deadline_s`` seconds.
Transient failures (curl's timeouts, a connection that broke, HTTP 408/429/5xx) are retried here,
not by curl: curl's own ``--retry`` writes the bytes it already sent again into a pipe, a corrupt
stream. A retry fetches the URL again from its start and skips what the reader already has (a plain
GET: no server has to support ranges); the manifest's sha256 still covers every byte.

A ``pipe:`` command runs in its own process group, so that stopping a read early ends the whole
command, not only its shell. Its output is watched the same way (``Watchdog``, on the time the reader
waits for it): a command that writes less than ``min_bytes_per_s`` over ``stall_s`` seconds, or keeps
the reader waiting ``deadline_s`` in all, is ended and the read fails. It is not retried: only its
author knows whether running it again is safe. Neither kind is retried when the reader stops it. Other schemes (``gs://``, ``s3://``, ...) are not
read: nothing would bound them; ``check_scheme`` says what to write instead.
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlparse

from vitssl.data.manifest import DataError
from vitssl.data.shard import local_path
from vitssl.redaction import redact_spec

# curl(1) "EXIT CODES", for the one error line.
CURL_EXIT = {6: "could not resolve the host", 7: "could not connect", 18: "the transfer ended early",
             22: "HTTP error (404: no such file, 403: no access)", 28: "timed out or too slow",
             35: "TLS handshake failed", 52: "the server sent nothing", 56: "the connection broke"}
TRANSIENT_EXITS = {18, 28, 35, 52, 55, 56, 92}  # worth another try: the server or the link, not the request
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ReadLimits:
    """Bounds of one remote read (``data.read_*`` in the config); the defaults fit a slow link."""

    min_bytes_per_s: int = 1024
    stall_s: int = 60
    deadline_s: int = 1800
    retries: int = 3
    retry_delay_s: float = 1.0
    connect_timeout_s: int = 10


_limits = ReadLimits()


def configure_reads(limits: ReadLimits) -> None:
    """Set the bounds for this process (and the DataLoader workers it forks later)."""
    global _limits
    _limits = limits


def read_limits() -> ReadLimits:
    return _limits


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


# looked up once here: the child between fork and exec must not load libraries (a lock another
# thread held at the fork would never be released there)
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _die_with_reader() -> None:
    """In the child before exec: killed when the reading process dies (a killed DataLoader worker or
    trainer leaves no transfer behind); Linux only."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class ReadFailed(OSError):
    """A remote read that failed for good; the message is already worded (and redacted)."""


class CurlStream:
    """A read-only stream of one http(s) URL through curl, bounded and retried (see the module)."""

    def __init__(self, url: str, limits: ReadLimits | None = None):
        self.url, self.limits = url, limits or _limits
        self.deadline = time.monotonic() + self.limits.deadline_s
        self.delivered, self.attempts, self.closed = 0, 0, False
        self.proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        lim, left = self.limits, max(1, int(self.deadline - time.monotonic()))
        self.attempts += 1
        self.skip = self.delivered  # a retry starts from byte 0: drop what was delivered already
        self.proc = subprocess.Popen(
            ["curl", "-f", "-s", "-L", "--connect-timeout", str(lim.connect_timeout_s),
             "--speed-limit", str(lim.min_bytes_per_s), "--speed-time", str(lim.stall_s),
             "--max-time", str(left), "-w", "%{stderr}%{http_code}", "--config", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1 << 16,
            start_new_session=True, preexec_fn=_die_with_reader)
        # the URL through stdin, not the command line: a token in it stays out of `ps` and /proc
        quoted = self.url.replace("\\", "\\\\").replace('"', '\\"')
        self.proc.stdin.write(f'url = "{quoted}"\n'.encode())
        self.proc.stdin.close()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        while True:
            data = self.proc.stdout.read(n)
            if self.skip:
                dropped = data[:self.skip]
                data, self.skip = data[len(dropped):], self.skip - len(dropped)
                if dropped and not data:
                    continue
            if data:
                self.delivered += len(data)
                return data
            status, http = self._finish()
            if status == 0:
                return b""
            if self._retryable(status, http) and self.attempts <= self.limits.retries \
                    and time.monotonic() + self.limits.retry_delay_s < self.deadline:
                time.sleep(self.limits.retry_delay_s)
                self._start()
                continue
            raise ReadFailed(self._explain(status, http))

    def _finish(self) -> tuple[int, int]:
        status = self.proc.wait()
        try:
            http = int(self.proc.stderr.read().decode(errors="replace").strip()[-3:] or 0)
        except ValueError:
            http = 0
        self.proc.stdout.close()
        self.proc.stderr.close()
        return status, http

    @staticmethod
    def _retryable(status: int, http: int) -> bool:
        return status in TRANSIENT_EXITS or (status == 22 and http in TRANSIENT_HTTP)

    def _explain(self, status: int, http: int) -> str:
        lim = self.limits
        if status == 28 and time.monotonic() >= self.deadline - 1:
            why = (f"not done within data.read_deadline_s={lim.deadline_s} s; raise it for large shards on a "
                   f"slow link")
        elif status == 28:
            why = (f"stalled: less than data.read_min_bytes_per_s={lim.min_bytes_per_s} B/s for "
                   f"data.read_stall_s={lim.stall_s} s")
        elif status == 22 and http:
            why = f"HTTP {http}" + (" (no such file)" if http == 404 else " (no access)" if http in (401, 403) else "")
        else:
            why = CURL_EXIT.get(status, "see curl(1) EXIT CODES")
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"curl exit {status}: {why}{tries}"

    def close(self) -> None:
        """Stop the transfer (if it still runs) and release the pipe; never raises."""
        if self.closed or self.proc is None:
            return
        self.closed = True
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """End ``proc`` and its process group if it still runs, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()
    proc.wait()


class Watchdog:
    """curl's bounds for a stream curl does not read, on the time the reader spends *waiting* for it (a
    reader busy elsewhere, e.g. a trainer saving a checkpoint, is no stall): fewer than
    ``min_bytes_per_s`` x ``stall_s`` bytes while it waited ``stall_s`` seconds (counted in consecutive
    windows: a stall is caught within 2 x ``stall_s``), or ``deadline_s`` seconds of waiting in all."""

    def __init__(self, limits: ReadLimits):
        self.limits = limits
        self.waited = self.window_waited = 0.0
        self.window_bytes = 0

    def wait_s(self) -> float:
        """How long a read may wait for the next bytes before the bounds are checked again."""
        lim = self.limits
        return max(0.0, min(lim.deadline_s - self.waited, lim.stall_s - self.window_waited))

    def count(self, waited: float, received: int) -> str | None:
        """Count a wait and the bytes it brought; why the stream stalled, or None."""
        lim = self.limits
        self.waited += waited
        self.window_waited += waited
        self.window_bytes += received
        if self.waited >= lim.deadline_s:
            return f"not done within data.read_deadline_s={lim.deadline_s} s; raise it for large shards on a slow link"
        if self.window_waited >= lim.stall_s:
            if self.window_bytes < lim.min_bytes_per_s * lim.stall_s:
                return (f"stalled: less than data.read_min_bytes_per_s={lim.min_bytes_per_s} B/s for "
                        f"data.read_stall_s={lim.stall_s} s")
            self.window_waited, self.window_bytes = 0.0, 0
        return None


class CommandStream:
    """The standard output of a ``pipe:`` command (run by the shell, in its own process group), read
    within the bounds of ``Watchdog``."""

    def __init__(self, command: str, limits: ReadLimits | None = None):
        self.command, self.watchdog = command, Watchdog(limits or _limits)
        # unbuffered: poll() sees every byte the command wrote, none waits in a buffer it cannot see
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, bufsize=0,
                                     start_new_session=True, preexec_fn=_die_with_reader)
        self.fd = self.proc.stdout.fileno()
        self.poller = select.poll()  # not select(): no limit on the descriptor's number
        self.poller.register(self.fd, select.POLLIN)
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left for n < 0), fewer only at the end of the output."""
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        chunks, got = [], 0
        while got < n:
            started = time.monotonic()
            ready = self.poller.poll(math.ceil(self.watchdog.wait_s() * 1000))  # POLLIN, or POLLHUP at the end
            waited = time.monotonic() - started
            data = os.read(self.fd, n - got) if ready else b""
            if ready and not data:  # the end of the output
                status = self.proc.wait()
                if status not in (0, 141, -signal.SIGPIPE):  # 141: the reader stopped early (SIGPIPE)
                    raise ReadFailed(f"the command exited with status {status}")
                break
            chunks.append(data)
            got += len(data)
            stalled = self.watchdog.count(waited, len(data))
            if stalled:
                self.close()
                raise ReadFailed(f"the command was ended: {stalled}")
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            stop_process(self.proc)


# what to write instead of a scheme that is not read here (its own client in a pipe: command)
PIPE_FOR = {"gs": "pipe:gsutil cat {url}", "s3": "pipe:aws s3 cp {url} -"}


def check_scheme(url: str) -> None:
    """One DataError for a URL that is neither local, http(s) nor ``pipe:``: webdataset would open
    ``gs://``, ``s3://``, ``sftp://``, ... through clients of its own with no low-speed limit or
    deadline, so a stalled source would hang training again."""
    if local_path(url) is not None or is_http(url) or url.startswith("pipe:"):
        return
    scheme = urlparse(url).scheme.lower()
    shown = redact_spec(url)
    shards = shown if ".tar" in shown else f"{shown.rstrip('/')}/train-{{000000..000009}}.tar"  # a base: its shards
    instead = PIPE_FOR.get(scheme, "pipe:<a command that writes {url} to stdout>").format(url=shards)
    raise DataError(f"cannot read {shown}: {scheme}:// is not read with bounds (a low-speed limit and a deadline): "
                    f"use http(s):// (e.g. a signed URL) or a command per shard, {instead}")


def open_stream(url: str) -> BinaryIO:
    """A readable stream of an http(s) URL or a ``pipe:`` command."""
    if is_http(url):
        return CurlStream(url)
    if url.startswith("pipe:"):
        return CommandStream(url[len("pipe:"):])
    check_scheme(url)
    raise DataError(f"cannot open {redact_spec(url)}: use a local path, file://, http(s):// or pipe:")
