"""Run the real entry points under `accelerate launch` in subprocesses, as users do."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def wait_until(condition, timeout: float = 60, what: str = "condition not reached") -> None:
    """Poll condition() until it holds; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(script: str, config: str, overrides: list[str], nproc: int = 1) -> list[str]:
    accel = "cpu_2proc.yaml" if nproc == 2 else "cpu_1proc.yaml"
    return [ACCELERATE, "launch", "--config_file", str(ROOT / "configs/accelerate" / accel),
            "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
            str(ROOT / "launch" / script), "--config", str(ROOT / config), *overrides]


def env() -> dict[str, str]:
    e = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def launch(script: str, config: str, overrides: list[str], cwd: Path, nproc: int = 1,
           timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(launch_cmd(script, config, overrides, nproc), cwd=cwd, env=env(),
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"launch failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def last_lines(out: subprocess.CompletedProcess) -> dict[str, str]:
    """The `mlflow run id: ...` and `checkpoint: ...` lines the entry points end with."""
    lines = [ln for ln in out.stdout.strip().splitlines() if ": " in ln][-2:]
    return dict(ln.split(": ", 1) for ln in lines)


def client(cwd: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")


def metric(client: mlflow.MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
