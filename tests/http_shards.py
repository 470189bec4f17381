"""A real HTTP server for shard folders: ``python -m http.server`` on 127.0.0.1 in a subprocess."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from launching import free_port


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serves ``root``; yields its base URL ``http://127.0.0.1:<port>``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"http.server on port {port} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


STALLING_SERVER = r"""
import http.server, os, sys, time
root, port, stall, marks = sys.argv[1], int(sys.argv[2]), set(sys.argv[3].split(",")), sys.argv[4]

class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=root, **kwargs)

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in stall:
            return super().do_GET()
        data = open(os.path.join(root, self.path.lstrip("/")), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:STALL_AFTER])  # then nothing, the connection held open
        self.wfile.flush()
        if marks:
            open(os.path.join(marks, name), "a").close()
        time.sleep(3600)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

# bytes of a stalled file's body sent before the stall: less than one tar record (10 KiB, what
# Python's streaming tarfile reads at a time) and less than one sample, so no sample of it arrives
STALL_AFTER = 1024


@contextmanager
def stalling_http_server(root: Path, stall: list[str], marks: Path | None = None) -> Iterator[str]:
    """Serves ``root`` like ``http_server``, but the files named in ``stall`` (base names) send their first
    ``STALL_AFTER`` bytes and then nothing, the connection held open: a source that stalls forever. When
    a stall begins, an empty file of that name appears in ``marks`` (a reader is blocked on it)."""
    port = free_port()
    server = STALLING_SERVER.replace("STALL_AFTER", str(STALL_AFTER))
    proc = subprocess.Popen([sys.executable, "-c", server, str(root), str(port), ",".join(stall), str(marks or "")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _wait_until_up(url: str, proc: subprocess.Popen) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError(f"the HTTP server for {url} did not start")
