"""What a per-sample loader pipeline costs the main process, per image size: the design the reader avoids.

    python benchmarks/bench_loader_stages.py [--reps 200] [--no-write]

A per-sample pipeline has its workers decode each sample and pickle chunks of 32 samples (numpy
arrays) into a pipe; the main process, which also drives the training step, unpickles them,
reorders them and collates batches. This script times each stage on one thread, in-process, for the
sample types of the project's datasets, and the same main-process stages for a uint8 image (what
the decoder yields, 4x fewer bytes than float32). The reader now stacks batches in the workers
(``vitssl.data.batches``; its main-process cost is in bench_loader.py's photo cases):

- decode: `decode_sample` (image decode + float32 in [0, 1]), in a worker;
- pickle: a 32-sample chunk through `pickle.dumps` (protocol 5), per sample, in a worker;
- unpickle + pipe: `pickle.loads` of that chunk plus one write and read of its bytes through an
  os.pipe (the kernel copies the queue makes), per sample, in the main process;
- collate: `default_collate` of 256 samples, per sample, in the main process.

"main process per sample" = unpickle + pipe + collate: its inverse is the most images/s one main
process can take from any number of workers before it runs a single training step. CPU time
(process_time), median of 5 repetitions.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import statistics
import threading
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from vitssl.data import decode_sample

from common import write_section

CHUNK, BATCH = 32, 256


def _to_numpy(sample: dict) -> dict:
    # small numpy arrays pickle through a worker queue far faster than tensors (one shm file each)
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in sample.items()}


def encoded(kind: str, size: int, rng: np.random.Generator) -> tuple[str, bytes]:
    """A PNG digit-like image or a JPEG of smooth content (about real photos' byte size)."""
    buf = io.BytesIO()
    if kind == "png":
        image = np.zeros((size, size), np.uint8)
        stroke = image[size // 4: 3 * size // 4, size // 3: 2 * size // 3]
        stroke[:] = rng.integers(128, 256, stroke.shape)
        Image.fromarray(image).save(buf, "PNG")
        return "png", buf.getvalue()
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.int16)
    noisy = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return "jpg", buf.getvalue()


def cpu_ms(fn, reps: int, per: int = 1) -> float:
    """Median CPU milliseconds of fn() over 5 repetitions of `reps` calls, divided by `per`."""
    fn()
    runs = []
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        runs.append((time.process_time() - t0) / reps / per * 1e3)
    return statistics.median(runs)


def through_pipe(payload: bytes) -> None:
    """One write and one read of `payload` through an os.pipe (writer thread: a pipe holds 64 KiB)."""
    r, w = os.pipe()
    writer = threading.Thread(target=_write_all, args=(w, payload))
    writer.start()
    while os.read(r, 1 << 20):
        pass
    writer.join()
    os.close(r)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


def stages(kind: str, size: int, reps: int) -> dict[str, float]:
    ext, data = encoded(kind, size, np.random.default_rng(0))
    raw = {"__key__": "train-0", ext: data, "cls": b"1"}
    sample = decode_sample(dict(raw))
    out = {"bytes": len(data), "decode": cpu_ms(lambda: decode_sample(dict(raw)), reps)}
    for dtype in ("float32", "uint8"):
        s = dict(sample)
        if dtype == "uint8":
            s["image"] = s["image"].mul(255).round_().to(torch.uint8)
        chunk = [(i, _to_numpy(dict(s))) for i in range(CHUNK)]
        payload = pickle.dumps(chunk, protocol=5)
        few = max(1, reps // CHUNK)
        out[f"pickle {dtype}"] = cpu_ms(lambda c=chunk: pickle.dumps(c, protocol=5), few, CHUNK)
        out[f"unpickle+pipe {dtype}"] = cpu_ms(lambda p=payload: (through_pipe(p), pickle.loads(p)), few, CHUNK)
        batch = [{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in x.items()}
                 for _, x in chunk] * (BATCH // CHUNK)
        out[f"collate {dtype}"] = cpu_ms(lambda b=batch: default_collate(b), max(1, reps // BATCH), BATCH)
        out[f"main {dtype}"] = out[f"unpickle+pipe {dtype}"] + out[f"collate {dtype}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=512)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [("MNIST digit, PNG", "png", 28), ("Tiny-ImageNet size, JPEG", "jpg", 64), ("ImageNet size, JPEG", "jpg", 224)]
    rows = ["| sample | encoded bytes | decode (worker) | pickle (worker) | unpickle + pipe (main) | collate (main) "
            "| main process per sample | its ceiling, images/s | main per sample, uint8 images | ceiling, uint8 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, kind, size in cases:
        r = stages(kind, size, args.reps)
        rows.append(f"| {name} {size}x{size} | {r['bytes']:,} | {r['decode']:.3f} | {r['pickle float32']:.3f} | "
                    f"{r['unpickle+pipe float32']:.3f} | {r['collate float32']:.3f} | **{r['main float32']:.3f}** | "
                    f"{1e3 / r['main float32']:,.0f} | {r['main uint8']:.3f} | {1e3 / r['main uint8']:,.0f} |")
        print(rows[-1], flush=True)
    body = ("CPU milliseconds per sample, one thread, median of 5 (`float32`: images converted in the workers; "
            "`uint8`: the decoded image before its conversion to float).\n\n" + "\n".join(rows))
    print(body)
    if not args.no_write:
        write_section("Loader stages: CPU time per sample", body)


if __name__ == "__main__":
    main()
