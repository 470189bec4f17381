"""Peak memory of a frozen-feature evaluation (linear probe) as the split grows.

    python benchmarks/bench_eval_memory.py [--per-class 1000 3000] [--depth 2]

Stand-in Tiny-ImageNet shards (random 64x64 RGB JPEGs, 3 classes) are made with data_prep; then, for
each size, in fresh processes measured by /usr/bin/time (peak RSS):
  streamed:  `launch/finetune.py --config configs/tiny_imagenet/linear.yaml` as shipped (features
             streamed in batches through the evaluation loader);
  in memory: the whole train and test splits loaded as float tensors first (the way the linear mode
             worked before), then the same features.
The encoder depth is cut (default 2 of 12 blocks) to keep the CPU time small: memory is dominated by
the images, not the model.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_section  # noqa: E402
from fixtures import tiny_imagenet_files, write_tiny_zip  # noqa: E402

IN_MEMORY = """
import sys, torch
from vitssl.data import load_split_tensors
from vitssl.models import ViT, ViTOptions
shards, depth = sys.argv[1], int(sys.argv[2])
enc = ViT(ViTOptions(patch_size=8, embed_dim=192, depth=depth, num_heads=3), image_size=64, channels=3).eval()
with torch.no_grad():
    for split in ("train", "test"):
        x, y, _ = load_split_tensors(shards, split)
        torch.cat([enc.embed_images(x[i:i + 256]) for i in range(0, len(x), 256)])
"""


def peak_rss_mb(cmd: list[str], cwd: Path) -> float:
    out = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    kb = [ln for ln in out.stderr.splitlines() if ln.startswith("PEAK_KB")][-1].split()[1]
    return int(kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for per_class in args.per_class:
            zipped = write_tiny_zip(tmp / f"tiny{per_class}.zip",
                                    tiny_imagenet_files(train_per_class=per_class, val_total=per_class))
            shards = tmp / f"shards{per_class}"
            subprocess.run([sys.executable, "-m", "data_prep", "tiny-imagenet", "--source", str(zipped),
                            "--out", str(shards)], check=True, cwd=ROOT, capture_output=True)
            n = 4 * per_class  # 3 classes x per_class train + per_class val
            streamed = peak_rss_mb([sys.executable, str(ROOT / "launch/finetune.py"), "--config",
                                    str(ROOT / "configs/tiny_imagenet/linear.yaml"), f"data.shards={shards}",
                                    "data.num_workers=0", f"model.depth={args.depth}", "finetune.num_classes=3",
                                    "finetune.linear_steps=50", f"run.output_dir={tmp}/run{per_class}",
                                    f"run.tracking_uri=sqlite:///{tmp}/mlflow.db"], tmp)
            in_memory = peak_rss_mb([sys.executable, "-c", IN_MEMORY, str(shards), str(args.depth)], tmp)
            rows.append((n, streamed, in_memory))
            print(f"{n} images: streamed {streamed:.0f} MB, in memory {in_memory:.0f} MB", flush=True)
    (n0, s0, m0), (n1, s1, m1) = rows[0], rows[-1]
    per_image_s = (s1 - s0) / (n1 - n0) * 1024
    per_image_m = (m1 - m0) / (n1 - n0) * 1024
    table = "\n".join(f"| {n:,} | {s:.0f} | {m:.0f} | {m / s:.2f}x |" for n, s, m in rows)
    write_section("Frozen-feature evaluation memory (linear probe, Tiny-ImageNet-sized images)", f"""
Peak RSS of one process (`/usr/bin/time`), stand-in 64x64 RGB JPEG shards, ViT-Ti width (192) at
depth {args.depth}. Streamed = `launch/finetune.py` with `configs/tiny_imagenet/linear.yaml` as shipped;
in memory = the whole train and test splits as float tensors first (the former linear/kNN path).

| images (train + test) | streamed, MB | in memory, MB | in memory / streamed |
|---|---|---|---|
{table}

Growth per image: streamed {per_image_s:.1f} KB, in memory {per_image_m:.1f} KB (a float 3x64x64 image is
48 KB). Each split here fits in one shard (data_prep's default is at most 10,000 samples a shard), so
these sizes cannot tell memory that grows with the shard from memory that grows with the dataset: a
run over many shards is the measurement still to make before extrapolating to Tiny-ImageNet.
""")


if __name__ == "__main__":
    main()
