"""Jobs for the scheduler tests; stdlib only, so a spawned worker imports this module in no time."""
from __future__ import annotations

import time
from pathlib import Path


def stamp(log: str, name: str, fail: bool = False) -> str:
    """Record the start and end of the job in `log`, optionally fail in between."""
    with open(log, "a") as f:
        f.write(f"start {name} {time.time()}\n")
    if fail:
        raise RuntimeError(f"{name} failed on purpose")
    with open(log, "a") as f:
        f.write(f"end {name} {time.time()}\n")
    return name.upper()


def meet(folder: str, name: str, partner: str, patience_s: float = 120.0) -> bool:
    """True when `partner` started while this job was running: the two ran at the same time."""
    Path(folder, name).touch()
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        if Path(folder, partner).exists():
            return True
        time.sleep(0.05)
    return False


def linger(pid_file: str) -> None:
    """Write this worker's pid, then wait until killed."""
    import os

    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def stop_on_sigterm(pid_file: str) -> str:
    """Like a trainer: turn SIGTERM into a clean return (after writing this worker's pid)."""
    import os
    import signal

    stop = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    Path(pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    signal.signal(signal.SIGTERM, previous)
    return "stopped"


def start_method() -> str:
    import multiprocessing

    return multiprocessing.get_start_method()


def visible_gpu(folder: str, name: str, together: int, patience_s: float = 120.0) -> str | None:
    """The GPU this worker was given, once `together` jobs run at the same time (one per worker)."""
    import os

    Path(folder, name).touch()
    deadline = time.monotonic() + patience_s
    while len(list(Path(folder).iterdir())) < together and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.environ.get("CUDA_VISIBLE_DEVICES")
