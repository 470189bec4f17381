"""Training-loader throughput (images/s) against indexing an in-memory tensor.

    python benchmarks/bench_loader.py [--epochs 3] [--batch-size 256] [--no-write]

Shards all 5,000 embedded MNIST digits (400 train + 100 test per class) into a temp dir, times
``make_train_loader`` with 0 and 2 workers, prints a markdown table and replaces the
"## Loader throughput" section of BENCHMARKS.md at the repo root.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from data_prep.cli import run
from vitssl.data import load_split_tensors, make_train_loader

from common import write_section


def time_loader(shard_dir: Path, batch_size: int, num_workers: int, epochs: int) -> tuple[float, int]:
    images, start = 0, time.perf_counter()
    for epoch in range(epochs):  # a fresh loader per epoch, as in training: worker start-up counts
        for batch in make_train_loader(shard_dir, batch_size=batch_size, rank=0, world_size=1,
                                       num_workers=num_workers, epoch=epoch):
            images += len(batch["image"])
    return images / (time.perf_counter() - start), images


def time_in_memory(shard_dir: Path, batch_size: int, steps: int) -> float:
    images, _, _ = load_split_tensors(shard_dir, "train")
    generator = torch.Generator().manual_seed(0)
    images[torch.randint(len(images), (batch_size,), generator=generator)]  # warm-up: first call pays set-up
    start = time.perf_counter()
    for _ in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
    assert batch.shape[0] == batch_size
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]  # other jobs on the machine skew every number: record it

    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = Path(tmp) / "mnist5k"
        run(["mnist", "--out", str(shard_dir), "--digits", "0-9", "--train-per-class", "400",
             "--test-per-class", "100"])
        rows = []
        for workers in (0, 2):
            rate, images = time_loader(shard_dir, args.batch_size, workers, args.epochs)
            rows.append((f"shards, make_train_loader, {workers} workers", rate, images))
        steps = rows[0][2] // args.batch_size
        rows.append(("in-memory tensor, random batch indices", time_in_memory(shard_dir, args.batch_size, steps),
                     steps * args.batch_size))

    table = ["| pipeline | images/s | images timed |", "|---|---:|---:|"]
    table += [f"| {name} | {rate:,.0f} | {images:,} |" for name, rate, images in rows]
    text = "\n".join([
        f"1-min load {load:.1f} at start, torch {torch.__version__}. 5,000 embedded MNIST digits "
        f"(4,000 train), batch {args.batch_size}, {args.epochs} epochs, a fresh loader (and workers) per "
        f"epoch, shuffle buffer 1000, sha256 checked once per process.", "",
        *table, "",
    ])
    print(text)
    if not args.no_write:
        write_section("Loader throughput", text)


if __name__ == "__main__":
    main()
