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
