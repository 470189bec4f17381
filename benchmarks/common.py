"""Shared helpers for benchmarks: interleaved timing and BENCHMARKS.md sections."""
from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def interleaved(cases: dict[str, Callable[[], int]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Items/s of each case, measured round-robin so machine load hits every case alike; median of rounds.

    Each case runs a fixed amount of work and returns how many items it processed.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            n = fn()
            samples[name].append(n / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in samples.items()}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of BENCHMARKS.md."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n\nEach section is written by the script named in it.\n"
    stamp = datetime.date.today().isoformat()
    section = (f"## {title}\n\nCommand: `{' '.join(['python', *sys.argv])}`  \n"
               f"Date: {stamp}; machine: {machine()}\n\n{body.strip()}\n\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS_MD.write_text(text)
