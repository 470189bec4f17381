"""Scale stand-in for full MNIST: Fashion-MNIST (70k images, MNIST's IDX format, Debian package
`dataset-fashion-mnist`). Times sharding, the training loader with 1 and 2 workers, and one epoch of
MAE pretraining on 2 CPU processes under `accelerate launch`.

    python benchmarks/bench_scale.py [--idx /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from vitssl.data import make_train_loader

from common import write_section

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t0


def loader_ips(shards: Path, workers: int, batch: int) -> float:
    t0, n = time.perf_counter(), 0
    for b in make_train_loader(shards, batch_size=batch, rank=0, world_size=1, num_workers=workers):
        n += len(b["image"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if not Path(args.idx).is_dir():
        sys.exit(f"{args.idx} not found: apt-get install dataset-fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "fashion"
        shard_s = timed([sys.executable, "-m", "data_prep", "mnist", "--source", f"idx:{args.idx}", "--digits", "0-9",
                         "--per-class", "all", "--shard-max-count", "5000", "--out", str(shards)], cwd=ROOT,
                        stdout=subprocess.DEVNULL)
        rates = {w: loader_ips(shards, w, args.batch) for w in (1, 2)}
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
               "--num_cpu_threads_per_process", "1", str(ROOT / "launch/pretrain.py"),
               "--config", str(ROOT / "configs/mnist012/mae.yaml"), f"data.shards={shards}", "data.batch_size=128",
               "run.epochs=1", f"run.output_dir={tmp}/run", f"run.tracking_uri=sqlite:///{tmp}/mlflow.db",
               "run.log_every=20"]
        epoch_s = timed(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db").search_runs(["1"])[0]
        train_ips = [m.value for m in mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_metric_history(
            run.info.run_id, "images_per_s")]
    body = (
        "Fashion-MNIST from Debian's `dataset-fashion-mnist` (60,000 train + 10,000 test, gzipped IDX) as the "
        f"full-MNIST stand-in; shards of 5,000 images; loader batch {args.batch}.\n\n"
        "| measurement | value |\n|---|---|\n"
        f"| shard 70,000 images (`python -m data_prep mnist --source idx:... --per-class all`) | {shard_s:.1f} s "
        f"({70000 / shard_s:,.0f} images/s) |\n"
        f"| training loader, 1 worker | {rates[1]:,.0f} images/s |\n"
        f"| training loader, 2 workers | {rates[2]:,.0f} images/s |\n"
        f"| one epoch of MAE pretraining (configs/mnist012/mae.yaml model, batch 128 x 2 CPU processes, gloo), "
        f"wall time incl. start-up | {epoch_s:.0f} s |\n"
        f"| its training throughput (median of logged windows) | {sorted(train_ips)[len(train_ips) // 2]:,.0f} "
        "images/s |\n")
    write_section("Scale: Fashion-MNIST as full MNIST", body)
    print(body)


if __name__ == "__main__":
    main()
