"""A real `mlflow server` on 127.0.0.1 for integration tests.

It proxies artifacts (`--serve-artifacts` into `--artifacts-destination`): runs get `mlflow-artifacts:/`
URIs and clients upload and download through the server, needing only its URL, as on a cluster.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from launching import free_port


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"mlflow server did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.5)


def start_server(root: Path, port: int) -> subprocess.Popen:
    """A server on `port` over the stores in `root`: start it again on the same root to bring it back."""
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    return subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: the server and its uvicorn workers die together


@contextmanager
def mlflow_server(root: Path):
    port = free_port()
    proc = start_server(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
