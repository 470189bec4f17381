"""`python -m data_prep images` against a bare Pillow loop doing the same decode-resize-encode work.

    python benchmarks/bench_data_prep_images.py [--images 200] [--rounds 3] [--max-side 256]

The input: photo-like JPEGs of ImageNet sizes (about 500x375, 100-150 KB), made from the two real
photographs scikit-learn installs (`load_sample_images`) by random crops, rescales and flips, saved at
a JPEG quality that lands each file in that range. Every case re-encodes every image (`--max-side`
below the image size, `--format jpg`), so the tool does what the bare loop does, plus its own work:
listing, the header pass, the process pool, tar writing, sha256, the manifest.

Cases, measured round-robin (machine load hits each alike), median of rounds:
  bare loop:     one process: Image.open, load, resize (bicubic, longer side = --max-side), save JPEG;
  tool, 1 / 2 workers: `data_prep images SRC --out DIR --max-side N --format jpg --workers W`.
Reported: images per wall-second and per CPU-second (this process and its children), and each
case's ratio to the bare loop. On a shared machine the wall rates move with the load; the CPU
rates and the ratios within one run are the numbers to compare.
"""
from __future__ import annotations

import argparse
import io
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from data_prep.cli import run as data_prep  # noqa: E402

from common import write_section  # noqa: E402

SIZES = [(500, 375), (375, 500), (500, 333), (500, 400), (480, 360)]


def make_photos(folder: Path, n: int, seed: int = 0) -> list[int]:
    """n JPEGs of 100-150 KB: a random crop of a sample photograph, rescaled to an ImageNet-like size."""
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    sizes = []
    for k in range(n):
        src = photos[k % 2]
        w, h = SIZES[rng.integers(len(SIZES))]
        aspect = w / h
        cw = int(min(src.shape[1], src.shape[0] * aspect) * rng.uniform(0.85, 1.0))  # the widest crop x 0.85..1
        ch = int(cw / aspect)
        x, y = rng.integers(0, src.shape[1] - cw + 1), rng.integers(0, src.shape[0] - ch + 1)
        img = Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for quality in range(88, 101):  # the lowest quality that reaches 100 KB
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            if buf.tell() >= 100_000:
                break
        (folder / f"{k:05d}.jpg").write_bytes(buf.getvalue())
        sizes.append(buf.tell())
    return sizes


def bare_loop(files: list[Path], max_side: int) -> int:
    for path in files:
        with Image.open(path) as img:
            img.load()
            w, h = img.size
            s = max_side / max(w, h)
            out = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=95)
    return len(files)


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-side", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photos"
        src.mkdir()
        sizes = make_photos(src, args.images)
        files = sorted(src.iterdir())
        out = Path(tmp) / "out"

        def tool(workers: int):
            def case() -> int:
                shutil.rmtree(out, ignore_errors=True)
                data_prep(["images", str(src), "--out", str(out), "--unlabeled", "--max-side", str(args.max_side),
                           "--format", "jpg", "--workers", str(workers)])
                return args.images
            return case

        cases = {"bare Pillow loop (1 process)": lambda: bare_loop(files, args.max_side),
                 "data_prep images --workers 1": tool(1), "data_prep images --workers 2": tool(2)}
        for fn in cases.values():  # warm-up: page cache, imports, the forkserver
            fn()
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                t0, c0 = time.perf_counter(), cpu_seconds()
                n = fn()
                wall[name].append(n / (time.perf_counter() - t0))
                cpu[name].append(n / (cpu_seconds() - c0))
    rates = {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in cases}
    base_wall, base_cpu = rates["bare Pillow loop (1 process)"]
    rows = [f"| {name} | {w:,.0f} | {w / base_wall:.2f}x | {c:,.0f} | {c / base_cpu:.2f}x |"
            for name, (w, c) in rates.items()]
    body = (f"{args.images} photo-like JPEGs (crops of scikit-learn's sample photographs), "
            f"{statistics.mean(sizes) / 1000:.0f} KB on average ({min(sizes) / 1000:.0f}-{max(sizes) / 1000:.0f} KB), "
            f"about 500x375; every image decoded, resized to a longer side of {args.max_side} and re-encoded as "
            f"JPEG quality 95; median of {args.rounds} interleaved rounds.\n\n"
            "| case | images/s (wall) | vs bare | images per CPU-second | vs bare |\n|---|---:|---:|---:|---:|\n"
            + "\n".join(rows))
    print(body)
    write_section("data_prep images: images/s against a bare Pillow loop", body)


if __name__ == "__main__":
    main()
