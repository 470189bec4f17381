"""What a study stage pays per training image outside the model, on one thread, as `make run` runs.

    python benchmarks/bench_study_inputs.py [--rounds 5] [--no-write]

- loader: one epoch of the 300 training digits through `make_train_loader` (batch 32, no workers,
  as the study's in-process workers read), µs per sample, with no transform, the fine-tune's random
  affine, and Video-MAE's 3-frame moving clip; each with the decoded-image cache off
  (`cache_bytes=0`: read and decode every epoch) and on (`data.cache_mb`'s default).
- transform alone: the moving clip as one `grid_sample` (`affine_copies`) against torchvision's
  `affine` frame by frame (what it replaced).
- optimizer: one AdamW step over the study ViT's parameters, per-tensor loop (the CPU default)
  against `fused=True`.

Every case is timed round-robin (benchmarks/common.interleaved) so load hits all alike; the
ratios are the result. Needs the shards `make run` writes (data/mnist012).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from vitssl.data import make_train_loader
from vitssl.data.augment import RandomAffine
from vitssl.data.clips import MovingClip, moving_clip
from vitssl.engine.optimizer import param_groups
from vitssl.models import ViT

from common import interleaved, write_section

SHARDS = Path(__file__).resolve().parents[1] / "data" / "mnist012"
CACHE_BYTES = 512 << 20


def loader_case(transform, cache_bytes: int):
    epoch = iter(range(1_000_000))

    def run() -> int:
        return sum(len(b["label"]) for b in make_train_loader(
            SHARDS, "train", batch_size=32, rank=0, world_size=1, seed=0, epoch=next(epoch), transform=transform,
            cache_bytes=cache_bytes))
    return run


def torchvision_clip(image: torch.Tensor, frames: int, velocity, spin: float) -> torch.Tensor:
    mid = (frames - 1) / 2
    return torch.stack([TF.affine(image, angle=(k - mid) * spin, translate=[(k - mid) * v for v in velocity],
                                  scale=1.0, shear=[0.0, 0.0], interpolation=TF.InterpolationMode.BILINEAR)
                        for k in range(frames)], dim=1).clamp_(0, 1)


def repeat(fn, n: int):
    def run() -> int:
        for _ in range(n):
            fn()
        return n
    return run


def optimizer_case(fused: bool):
    model = ViT()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(param_groups(model, 0.05, None), lr=1e-3, fused=fused or None)
    return repeat(opt.step, 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (SHARDS / "manifest.json").is_file():
        raise SystemExit(f"no shards in {SHARDS}: run `make run` (or python -m data_prep mnist --val-per-class 100 "
                         f"--large-test-rest --unlabeled-rest --out data/mnist012) first")
    torch.set_num_threads(1)
    transforms = {"none": None, "fine-tune affine": RandomAffine(10, 0.1, (0.9, 1.1)),
                  "Video-MAE moving clip": MovingClip(3)}
    loader = {(name, cache): loader_case(t, CACHE_BYTES if cache else 0)
              for name, t in transforms.items() for cache in (False, True)}
    rate = interleaved({f"{name}|{cache}": fn for (name, cache), fn in loader.items()}, args.rounds)
    image = torch.rand(1, 28, 28)
    clip = interleaved({"grid_sample": repeat(lambda: moving_clip(image, 3, (1.0, 1.0), 5.0), 2000),
                        "torchvision": repeat(lambda: torchvision_clip(image, 3, (1.0, 1.0), 5.0), 2000)}, args.rounds)
    steps = interleaved({"default": optimizer_case(False), "fused": optimizer_case(True)}, args.rounds)

    us = {k: 1e6 / v for k, v in rate.items()}
    lines = ["One thread, median of rounds; µs per training sample through `make_train_loader` (batch 32, "
             "in-process, the 300 training digits):", "",
             "| transform | cache off | cache on | ratio |", "|---|---:|---:|---:|"]
    for name in transforms:
        off, on = us[f"{name}|False"], us[f"{name}|True"]
        lines.append(f"| {name} | {off:.0f} | {on:.0f} | {off / on:.1f}x |")
    c_new, c_old = 1e6 / clip["grid_sample"], 1e6 / clip["torchvision"]
    s_old, s_new = 1e3 / steps["default"], 1e3 / steps["fused"]
    lines += ["", f"3-frame moving clip of one digit: one `grid_sample` {c_new:.0f} µs, torchvision `affine` "
              f"frame by frame {c_old:.0f} µs ({c_old / c_new:.1f}x).  ",
              f"AdamW step, study ViT ({sum(p.numel() for p in ViT().parameters()):,} parameters): "
              f"per-tensor {s_old:.2f} ms, fused {s_new:.2f} ms ({s_old / s_new:.1f}x)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Study inputs: CPU cost per training image", body)


if __name__ == "__main__":
    main()
