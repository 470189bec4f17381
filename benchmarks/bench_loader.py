"""Training-loader throughput (images/s): local folder vs HTTP on 127.0.0.1 vs a plain webdataset pipeline,
and the reader on ImageNet-size photos (main-process CPU per sample, 2 workers vs the CPU limit).

    python benchmarks/bench_loader.py [--rounds 3] [--batch-size 256] [--no-write]
    python benchmarks/bench_loader.py --json [--photos 1024] [--sizes 28 64 224]   # photo cases, JSON lines

Two datasets, each written by data_prep's writer into a temp dir: the 5,000 embedded MNIST digits
(4,000 train PNGs, 28x28x1, shards of 1,000) and a Tiny-ImageNet-sized stand-in (4,000 train JPEGs,
64x64x3 of smooth random content, about the byte size of real Tiny-ImageNet JPEGs, shards of 1,000).
Per dataset, in one run with the cases interleaved (median of rounds; one epoch each, a fresh loader
and workers per epoch as in training):

- make_train_loader on the local folder (fast tar path), and on the same files through webdataset's
  tar iterator (the path remote shards take), to show whether the local fast path matters;
- make_train_loader on the same shards served by a threaded HTTP server on 127.0.0.1;
- a plain ``webdataset.WebDataset(urls).decode("torchrgb")`` pipeline (no exact-once plan, no seeding);
- bytes the HTTP server sent for one epoch of 2 ranks x 2 workers, over the dataset's bytes.

Prints markdown tables and replaces the "## Loader throughput" and "## Reader at ImageNet sizes"
sections of BENCHMARKS.md. The photo cases are described in ``loader_photos``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import webdataset as wds
from loader_photos import photo_cases, photo_table, write_photos
from PIL import Image

from data_prep.cli import run
from data_prep.writer import Sample, SplitSource, write_dataset
from vitssl.data import make_train_loader, split_shards, tar_stream

from common import interleaved, machine, write_section


class CountingHandler(SimpleHTTPRequestHandler):
    """Serves a folder and counts the bytes it manages to send (clients may hang up mid-shard)."""

    sent = 0
    lock = threading.Lock()

    def copyfile(self, source, outputfile):
        while block := source.read(1 << 16):
            try:
                outputfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                return
            with self.lock:
                CountingHandler.sent += len(block)

    def log_message(self, *args):
        pass


def smooth_jpeg(rng: np.random.Generator) -> bytes:
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((64, 64), Image.BICUBIC)
    noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (64, 64, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_tiny_standin(out: Path, train: int, classes: int = 200) -> None:
    rng = np.random.default_rng(0)
    samples = [Sample("jpg", smooth_jpeg(rng), i % classes, f"c{i % classes}", str(i)) for i in range(train)]
    head = {"dataset": "tiny-imagenet-standin", "source": "smooth random JPEGs",
            "image": {"height": 64, "width": 64, "channels": 3, "format": "jpg"},
            "classes": [f"c{i}" for i in range(classes)], "options": {"train": train}, "command": "bench_loader.py"}
    write_dataset(out, head, {"train": SplitSource(train, samples)}, shard_max_count=1000,
                  shard_max_bytes=256 * 1024**2)


def loader_epoch(shards: str, batch_size: int, workers: int, rank: int = 0, world: int = 1,
                 streams: int | None = None) -> int:
    loader = make_train_loader(shards, batch_size=batch_size, rank=rank, world_size=world, num_workers=workers,
                               streams=streams)
    return sum(len(batch["image"]) for batch in loader)


def generic_tar_epoch(shards: str, batch_size: int, workers: int, streams: int) -> int:
    # Every shard through webdataset's tar iterator (read from its start) instead of the local fast path.
    with mock.patch.object(tar_stream, "local_path", lambda url: None):
        return loader_epoch(shards, batch_size, workers, streams=streams)


def plain_webdataset_epoch(urls: list[str], batch_size: int, workers: int) -> int:
    dataset = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only)
               .decode("torchrgb").to_tuple("jpg;png", "cls").batched(batch_size, partial=False))
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers)
    return sum(len(images) for images, _ in loader)


def bytes_fetched(base_url: str, batch_size: int) -> int:
    CountingHandler.sent = 0
    for rank in range(2):
        loader_epoch(base_url, batch_size // 2, 2, rank=rank, world=2)
    return CountingHandler.sent


def bench(name: str, folder: Path, base_url: str, args) -> list[str]:
    shards = split_shards(folder, "train")
    data_bytes = sum(s.bytes for s in shards)
    urls = [s.url for s in shards]
    b = args.batch_size
    remote_streams = make_train_loader(base_url, batch_size=b, rank=0, world_size=1).plan.streams
    cases = {
        "make_train_loader, local folder, 0 workers": partial(loader_epoch, str(folder), b, 0),
        "make_train_loader, local folder, 2 workers": partial(loader_epoch, str(folder), b, 2),
        f"make_train_loader, local folder, 0 workers, {remote_streams} streams as for remote shards":
            partial(loader_epoch, str(folder), b, 0, streams=remote_streams),
        f"make_train_loader, local files via webdataset's tar iterator, 0 workers, {remote_streams} streams":
            partial(generic_tar_epoch, str(folder), b, 0, remote_streams),
        "make_train_loader, HTTP 127.0.0.1, 0 workers": partial(loader_epoch, base_url, b, 0),
        "make_train_loader, HTTP 127.0.0.1, 2 workers": partial(loader_epoch, base_url, b, 2),
        "plain WebDataset(urls).decode(), local, 0 workers": partial(plain_webdataset_epoch, urls, b, 0),
        "plain WebDataset(urls).decode(), HTTP, 0 workers":
            partial(plain_webdataset_epoch, [f"{base_url}/{Path(u).name}" for u in urls], b, 0),
    }
    rates = interleaved(cases, rounds=args.rounds)
    base = rates["make_train_loader, local folder, 0 workers"]
    fetched = bytes_fetched(base_url, b)
    streams = make_train_loader(base_url, batch_size=b // 2, rank=0, world_size=2).plan.streams
    rows = [f"| {name} | {case} | {rate:,.0f} | {rate / base:.2f} |" for case, rate in rates.items()]
    rows.append(f"| {name} | bytes fetched over HTTP per epoch, 2 ranks x 2 workers ({len(shards)} shards, "
                f"{streams} streams) / dataset bytes | {fetched:,} / {data_bytes:,} | **{fetched / data_bytes:.2f}** |")
    return rows


def photos_section(args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_photos(Path(tmp) / "photos", args.photos)
        size_kb = sum(s.bytes for s in split_shards(shards, "train")) / args.photos / 1e3
        rows = photo_cases(shards, args.sizes, args.photo_batch_size, 2, args.rounds)
    for row in rows:
        row["jpeg_kb"] = round(size_kb, 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--photos", type=int, default=1024, help="500x375 photo JPEGs for the ImageNet-size cases")
    parser.add_argument("--photo-batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 224])
    parser.add_argument("--json", action="store_true", help="only the photo cases, one JSON object per case")
    parser.add_argument("--photos-only", action="store_true", help="only the photo cases, as a markdown table")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # other jobs on the machine skew every number: record it
    if args.json:
        for row in photos_section(args):
            print(json.dumps(row | {"load_1min_at_start": load}))
        return
    if args.photos_only:
        return report_photos(args, load)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run(["mnist", "--out", str(root / "mnist"), "--digits", "0-9", "--train-per-class", "400",
             "--test-per-class", "1", "--shard-max-count", "1000"])
        write_tiny_standin(root / "tiny", train=4000)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            rows = bench("MNIST png 28x28", root / "mnist", f"{url}/mnist", args)
            rows += bench("Tiny-ImageNet-sized jpg 64x64", root / "tiny", f"{url}/tiny", args)
        finally:
            server.shutdown()

    table = ["| data | pipeline | images/s | vs local folder, 0 workers |", "|---|---|---:|---:|", *rows]
    text = "\n".join([
        f"1-min load {load:.1f} at start, torch {torch.__version__}, {machine()}. 4,000 train images per "
        f"dataset in shards of 1,000, batch {args.batch_size}, one epoch per timing, median of {args.rounds} "
        f"interleaved rounds, a fresh loader (and workers) per epoch, shuffle buffer 1000. The plain "
        f"WebDataset pipeline decodes with PIL and does no exact-once split, no seeding, no shuffling.", "",
        *table, "",
    ])
    print(text)
    if not args.no_write:
        write_section("Loader throughput", text)
    report_photos(args, load)


def report_photos(args, load: float) -> None:
    rows = photos_section(args)
    for row in rows:
        print(json.dumps(row | {"load_1min_at_start": load}))
    photos = "\n".join([
        "`--json`: the same cases as JSON lines (e.g. `--json --sizes 224`).", "",
        f"1-min load {load:.1f} at start, torch {torch.__version__}, {machine()}. {args.photos} photo JPEGs of "
        f"500x375 ({rows[0]['jpeg_kb']:.0f} KB on average), RandomResizedCrop(scale 0.2-1, bicubic) + flip on read, "
        f"batch {args.photo_batch_size}, median of {args.rounds} epochs; see benchmarks/loader_photos.py for "
        f"what each column measures.", "", *photo_table(rows), ""])
    print(photos)
    if not args.no_write:
        write_section("Reader at ImageNet sizes", photos)


if __name__ == "__main__":
    main()
