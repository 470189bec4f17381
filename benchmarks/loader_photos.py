"""The reader on ImageNet-size photos: what the main process pays per sample, and how close 2 workers
come to the CPU limit of decode + crop.

Photo-like JPEGs of 500x375 (random crops of scikit-learn's sample photographs, rescaled; quality 98,
~100-130 KB like ImageNet's), cropped on read (RandomResizedCrop, scale 0.2-1, bicubic) to 28, 64 and
224 px, as MAE pretraining reads them. Per output size:

- ``decode+crop, 1 thread``: SampleMaker on the raw samples in this process on one torch thread (as
  in a DataLoader worker), CPU time per sample
  (full decode, the default, and reduced-scale JPEG decode as its own case): the work a worker must
  do per sample;
- ``TrainLoader, 2 workers``: one epoch as the trainer gets it (uint8 batches, no float conversion,
  full decode),
  a fresh loader and workers per epoch. ``main_cpu_ms_per_sample``: this process's CPU time
  (getrusage(RUSAGE_SELF); the workers are other processes) from the first batch to the last, over
  those samples; ``epoch_start_main_cpu_ms``: its CPU time until the first batch (the plan, the shard
  index, forking the workers: once per epoch; joining them at the end is not counted either);
  ``worker_cpu_ms_per_sample``: the workers' (RUSAGE_CHILDREN once they are joined);
  ``vs_2x_one_thread``: images/s over twice the one-thread decode+crop rate (wall, so a loaded machine
  lowers it); ``steady_vs_2x_one_thread``: the same from the first batch to the last (without the
  workers' start, which a long epoch amortises); ``cpu_efficiency``: one-thread decode+crop CPU per sample over the workers' CPU per
  sample (how much of the workers' CPU is the decode and crop itself).
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

from vitssl.data import DataConfig, TrainLoader, split_shards
from vitssl.data.samples import SampleMaker
from vitssl.data.tar_stream import read_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from photos import write_photo_shards  # noqa: E402


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def write_photos(out: Path, count: int) -> Path:
    return write_photo_shards(out, {"train": count}, [(500, 375)], classes=10, quality=98, shard_max_count=256)


def data_config(shards: Path, size: int, batch_size: int, workers: int, reduced: bool = False) -> DataConfig:
    return DataConfig(shards=str(shards), image_size=size, channels=3, batch_size=batch_size, num_workers=workers,
                      crop="random_resized", crop_scale=(0.2, 1.0), interpolation="bicubic", cache_mb=0,
                      reduced_decode=reduced, check_sha=False)


def one_thread(shards: Path, size: int, reduced: bool, limit: int) -> dict:
    """CPU ms per sample of decode + crop in this process on one thread, as a DataLoader worker runs
    (the raw bytes read beforehand)."""
    raws = [raw for shard in split_shards(shards, "train", check_sha=False) for _, raw in read_shard(shard)][:limit]
    for i, raw in enumerate(raws):
        raw["__index__"] = i
    make = SampleMaker(data_config(shards, size, 1, 0, reduced), "random_resized", None, 0, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0, w0 = cpu_s(resource.RUSAGE_SELF), time.perf_counter()
        for raw in raws:
            make(raw)
        cpu, wall = cpu_s(resource.RUSAGE_SELF) - t0, time.perf_counter() - w0
    finally:
        torch.set_num_threads(threads)
    return {"cpu_ms_per_sample": 1e3 * cpu / len(raws), "images_per_s": len(raws) / wall}


def loader_epoch(shards: Path, size: int, batch_size: int, workers: int, epoch: int) -> dict:
    start0, kids0, w0 = cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN), time.perf_counter()
    loader = TrainLoader(data_config(shards, size, batch_size, workers), epoch=epoch, float_pixels=False)
    batches = iter(loader)
    first = len(next(batches)["index"])
    main0, first_at = cpu_s(resource.RUSAGE_SELF), time.perf_counter()  # from the first batch to the last
    rest = sum(len(next(batches)["index"]) for _ in range(len(loader) - 1))
    main, last_at = cpu_s(resource.RUSAGE_SELF) - main0, time.perf_counter()
    assert next(batches, None) is None  # ends the epoch: the workers exit and are joined
    wall, kids = time.perf_counter() - w0, cpu_s(resource.RUSAGE_CHILDREN) - kids0
    n = first + rest
    return {"images_per_s": n / wall, "steady_images_per_s": rest / (last_at - first_at),
            "main_cpu_ms_per_sample": 1e3 * main / rest,
            "epoch_start_main_cpu_ms": 1e3 * (main0 - start0),
            "worker_cpu_ms_per_sample": 1e3 * kids / n if workers else None, "samples": n}


def median_of(runs: list[dict]) -> dict:
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] if runs[0][k] is not None else None for k in runs[0]}


def photo_cases(shards: Path, sizes: list[int], batch_size: int, workers: int, rounds: int) -> list[dict]:
    """Per size, ``rounds`` rounds of (one-thread reduced, one-thread full, one loader epoch) back to back:
    each ratio is taken within its round, so a machine whose speed drifts between rounds (a shared or
    frequency-scaled one) does not skew it; every figure is the median over the rounds."""
    rows = []
    for size in sizes:
        rounds_seen = []
        for e in range(rounds):
            thread, full = one_thread(shards, size, True, 256), one_thread(shards, size, False, 256)
            loader = loader_epoch(shards, size, batch_size, workers, e)
            rounds_seen.append({"thread": thread, "full": full, "loader": {
                **loader, "vs_2x_one_thread": loader["images_per_s"] / (workers * full["images_per_s"]),
                "steady_vs_2x_one_thread": loader["steady_images_per_s"] / (workers * full["images_per_s"]),
                "cpu_efficiency": full["cpu_ms_per_sample"] / loader["worker_cpu_ms_per_sample"]}})
        thread, full, loader = (median_of([r[k] for r in rounds_seen]) for k in ("thread", "full", "loader"))
        rows.append({"case": "decode+crop, 1 thread, reduced-scale decode", "image_size": size, "workers": 0,
                     "images_per_s": thread["images_per_s"], "main_cpu_ms_per_sample": thread["cpu_ms_per_sample"]})
        rows.append({"case": "decode+crop, 1 thread, full decode", "image_size": size, "workers": 0,
                     "images_per_s": full["images_per_s"], "main_cpu_ms_per_sample": full["cpu_ms_per_sample"]})
        rows.append({"case": f"TrainLoader, {workers} workers", "image_size": size, "workers": workers,
                     "batch_size": batch_size, **loader})
    return rows


def photo_table(rows: list[dict]) -> list[str]:
    out = ["| case | px | images/s | main CPU ms/sample | main CPU ms at epoch start | worker CPU ms/sample | "
           "vs 2 x 1-thread rate (wall) | same, first to last batch | CPU efficiency |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        worker = r.get("worker_cpu_ms_per_sample")
        ratio, eff, steady = r.get("vs_2x_one_thread"), r.get("cpu_efficiency"), r.get("steady_vs_2x_one_thread")
        out.append(f"| {r['case']} | {r['image_size']} | {r['images_per_s']:,.0f} | "
                   f"{r['main_cpu_ms_per_sample']:.4f} | {r.get('epoch_start_main_cpu_ms', 0):.0f} | "
                   f"{'' if worker is None else f'{worker:.3f}'} | "
                   f"{'' if ratio is None else f'**{ratio:.2f}**'} | {'' if steady is None else f'{steady:.2f}'} | "
                   f"{'' if eff is None else f'{eff:.2f}'} |")
    return out
