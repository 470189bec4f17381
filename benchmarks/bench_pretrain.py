"""Pretrain step throughput: MAE `drop` vs `zero` at mask ratio 0.75, and our ViT vs timm's.

Step = forward + backward + AdamW step on a fixed random batch, fp32 on CPU. Cases are timed
round-robin in one run so that machine load affects them alike; figures are medians.
"""
from __future__ import annotations

import argparse

import torch
from timm.models.vision_transformer import VisionTransformer

from vitssl.config import PretrainConfig
from vitssl.models import ViT, ViTOptions
from vitssl.objectives import build_objective

from common import interleaved, write_section

SETUPS = {  # name: (image size, channels, patch, width, depth, heads)
    "MNIST 28x28, patch 7 (16 tokens), width 64, depth 4": (28, 1, 7, 64, 4, 4),
    "64x64 RGB, patch 8 (64 tokens), width 192, depth 6": (64, 3, 8, 192, 6, 3),
}


def step_fn(model: torch.nn.Module, forward, batch_size: int, steps: int):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> int:
        for _ in range(steps):
            loss = forward()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * batch_size
    return run


def mae_case(size, chans, patch, width, depth, heads, style, batch):
    cfg = PretrainConfig.model_validate({
        "data": {"image_size": size, "channels": chans},
        "model": {"patch_size": patch, "embed_dim": width, "depth": depth, "num_heads": heads},
        "objective": {"name": "mae", "style": style, "mask_ratio": 0.75, "decoder_dim": 64, "decoder_depth": 2}})
    mae = build_objective(cfg)
    x = torch.rand(batch, chans, size, size)
    n = mae.encoder.num_patches
    noise = torch.rand(batch, n)
    return mae, lambda: mae({"image": x, "mask_noise": noise})[0]


def encoder_cases(size, chans, patch, width, depth, heads, batch):
    ours = ViT(ViTOptions(patch_size=patch, embed_dim=width, depth=depth, num_heads=heads), size, chans)
    timm = VisionTransformer(img_size=size, patch_size=patch, in_chans=chans, embed_dim=width, depth=depth,
                             num_heads=heads, num_classes=0, global_pool="token", class_token=True)
    x = torch.rand(batch, chans, size, size)
    return (ours, lambda: ours(x).square().mean()), (timm, lambda: timm(x).square().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for title, dims in SETUPS.items():
        cases = {}
        for style in ("drop", "zero"):
            model, fwd = mae_case(*dims, style, args.batch)
            cases[f"mae_{style}"] = step_fn(model, fwd, args.batch, args.steps)
        (ours, f_ours), (timm, f_timm) = encoder_cases(*dims, args.batch)
        cases["vit_ours"] = step_fn(ours, f_ours, args.batch, args.steps)
        cases["vit_timm"] = step_fn(timm, f_timm, args.batch, args.steps)
        ips = interleaved(cases, args.rounds)
        rows.append(f"| {title} | {ips['mae_drop']:.0f} | {ips['mae_zero']:.0f} | "
                    f"**{ips['mae_drop'] / ips['mae_zero']:.2f}x** | {ips['vit_ours']:.0f} | {ips['vit_timm']:.0f} | "
                    f"**{ips['vit_ours'] / ips['vit_timm']:.2f}x** |")
        print(rows[-1], flush=True)
    body = (f"fp32, CPU, batch {args.batch}, {args.threads} threads, {args.steps} steps per timing, median of "
            f"{args.rounds} interleaved rounds; MAE decoder width 64, depth 2, mask ratio 0.75. Goals: drop >= 2x "
            "zero; our ViT within 10% of timm's VisionTransformer (same width/depth/heads, all tokens) or faster.\n\n"
            "| setup | MAE drop img/s | MAE zero img/s | drop/zero | our ViT img/s | timm ViT img/s | ours/timm |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    write_section("Pretrain step throughput", body)
    print(body)


if __name__ == "__main__":
    main()
