"""MAE pretraining throughput and model FLOP utilisation (MFU), for GPUs; `--smoke` runs it small on CPU.

    python benchmarks/bench_gpu.py                 # one GPU: ViT-Ti/S/B at 224 + the MNIST config
    python benchmarks/bench_gpu.py --smoke         # CPU: 64x64 images, a few steps, same code paths

Each case is one optimizer step loop as the trainer runs it (LR set before the step, backward,
step, zero_grad; no host sync inside the timed loop), in bf16, with and without `torch.compile`,
fed either from webdataset shards through the project's loader or from tensors already on the
device, so the loader's share is the gap between the two. With more than one GPU (`--smoke` on
CPU: 2 processes, the MNIST config only) the script also launches itself under `accelerate launch`
with DDP and with DeepSpeed ZeRO-2 (configs/accelerate/) and reports both.

MFU = achieved model FLOP/s / device peak FLOP/s, with model FLOPs = 3 x forward matmul FLOPs
(backward ~ 2 x forward) from the formula `mae_forward_flops` prints; a FlopCounterMode count of
one real step is printed beside it as a check.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitssl.config import PretrainConfig, load_config
from vitssl.data import TrainLoader
from vitssl.engine import flops
from vitssl.engine.batches import DeviceFeed
from vitssl.engine.flops import FORMULA
from vitssl.objectives import build_objective

from common import write_section

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ("anchors: He et al. MAE ViT-L ~ 106 img/s per V100; H100 SXM bf16 dense peak 989 TFLOP/s; "
           "goal on an H100: ViT-B MAE >= 45% MFU")
VITS = {"vit_ti": (192, 12, 3), "vit_s": (384, 12, 6), "vit_b": (768, 12, 12)}  # width, depth, heads


@dataclass
class Case:
    model: str
    image: int
    channels: int
    patch: int
    width: int
    depth: int
    heads: int
    dec_width: int
    dec_depth: int
    dec_heads: int
    ratio: float = 0.75


def vit_case(name: str, image: int) -> Case:
    width, depth, heads = VITS[name]
    return Case(name, image, 3, 16, width, depth, heads, 512, 8, 16)  # decoder 8 x 512 as in He et al.


def mnist_case() -> Case:
    cfg = load_config(PretrainConfig, ROOT / "configs/mnist012/mae.yaml")
    o = cfg.objective
    return Case("mnist_config", cfg.data.image_size, cfg.data.channels, cfg.model.patch_size, cfg.model.embed_dim,
                cfg.model.depth, cfg.model.num_heads, o["decoder_dim"], o["decoder_depth"], o.get("decoder_heads", 4),
                o["mask_ratio"])


def pretrain_config(c: Case, shards: str, batch: int) -> PretrainConfig:
    return PretrainConfig.model_validate({
        "data": {"shards": shards, "image_size": c.image, "channels": c.channels, "batch_size": batch},
        "model": {"patch_size": c.patch, "embed_dim": c.width, "depth": c.depth, "num_heads": c.heads},
        "objective": {"name": "mae", "style": "drop", "mask_ratio": c.ratio, "decoder_dim": c.dec_width,
                      "decoder_depth": c.dec_depth, "decoder_heads": c.dec_heads},
        "optim": {"lr": 1e-4}, "run": {"precision": "bf16", "grad_clip": None}})


def mae_forward_flops(c: Case) -> float:
    return flops.mae_forward_flops(c.image, c.channels, c.patch, c.width, c.depth, c.dec_width, c.dec_depth, c.ratio)


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "unknown for CPUs (give --peak-tflops)"
    name, peak = torch.cuda.get_device_name(device), flops.peak_flops(device)
    return peak, (f"{peak / 1e12:g} TFLOP/s bf16 dense ({name})" if peak else f"unknown for {name} (give --peak-tflops)")


# ---------------------------------------------------------------- data


def jpeg_shards(out: Path, size: int, count: int) -> Path:
    """Random-noise JPEG shards (a realistic decode cost) in the project's format; made once."""
    if (out / "manifest.json").is_file():
        return out
    import io

    import numpy as np
    from PIL import Image

    from data_prep.writer import Sample, SplitSource, write_dataset

    rng = np.random.default_rng(0)

    def samples():
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
            yield Sample("jpg", buf.getvalue(), i % 2, f"c{i % 2}", f"noise-{i}")

    head = {"dataset": "noise", "source": {"kind": "bench_gpu"}, "options": {"size": size, "count": count},
            "image": {"height": size, "width": size, "channels": 3, "format": "jpeg"}, "classes": ["c0", "c1"]}
    write_dataset(out, head, {"train": SplitSource(count, samples())}, shard_max_count=1000, shard_max_bytes=1 << 28)
    return out


def mnist_shards(out: Path) -> Path:
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--out", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
    return out


def shard_batches(cfg: PretrainConfig, transform, accelerator, workers: int, dtype: torch.dtype):
    """Endless training batches from the shards, epoch after epoch (a fresh loader each), as the trainer
    gets them: uint8 in pinned memory, copied one batch ahead and made float on the device."""
    data = cfg.data.model_copy(update={"num_workers": workers, "check_sha": False})
    epoch = 0
    while True:
        loader = TrainLoader(data, rank=accelerator.process_index, world_size=accelerator.num_processes,
                             epoch=epoch, transform=transform, float_pixels=False,
                             pin_memory=accelerator.device.type == "cuda")
        yield from DeviceFeed(loader, accelerator.device, dtype)
        epoch += 1


def synthetic_batches(cfg: PretrainConfig, n_patches: int, device: torch.device):
    b, c, s = cfg.data.batch_size, cfg.data.channels, cfg.data.image_size
    batch = {"image": torch.rand(b, c, s, s, device=device), "mask_noise": torch.rand(b, n_patches, device=device)}
    while True:
        yield batch


# ---------------------------------------------------------------- timing


def run_case(case: Case, data: str, compiled: bool, args, shard_dir: Path) -> dict:
    """img/s (all processes) of one configuration; runs in this process under the current accelerate launch."""
    from vitssl.engine.accelerator import build_accelerator
    from vitssl.engine.batches import to_model_input
    from vitssl.engine.optimizer import build_optimizer
    from vitssl.engine.precision import cast_float_buffers, model_dtype

    cfg = pretrain_config(case, str(shard_dir), args.batch if case.model != "mnist_config" else args.mnist_batch)
    accelerator = build_accelerator(cfg.run, cfg.data.batch_size)
    torch.manual_seed(0)
    objective = build_objective(cfg)
    n_patches = objective.encoder.num_patches
    optimizer = build_optimizer(objective, cfg.optim, 1e-4)
    model = torch.compile(objective) if compiled else objective
    model, optimizer = accelerator.prepare(model, optimizer)
    dtype = model_dtype(model)  # bf16 under DeepSpeed, which casts the model instead of autocasting
    cast_float_buffers(model, dtype)  # as the trainer does
    batches = (shard_batches(cfg, objective.sample_transform(), accelerator, args.workers, dtype) if data == "shards"
               else synthetic_batches(cfg, n_patches, accelerator.device))

    def step():
        batch = next(batches)
        batch = to_model_input(batch, accelerator.device, dtype)
        for group in optimizer.param_groups:
            group["lr"] = 1e-4
        with accelerator.autocast():
            loss, _ = model(batch)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    sync(accelerator)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(accelerator)
    elapsed = time.perf_counter() - t0
    images = args.steps * cfg.data.batch_size * accelerator.num_processes
    result = {"images_per_s": images / elapsed, "final_loss": float(loss.detach()), "world": accelerator.num_processes,
              "distributed": str(accelerator.distributed_type).split(".")[-1], "device": device_name(accelerator.device)}
    if args.count_flops and not compiled and accelerator.num_processes == 1:
        with FlopCounterMode(display=False) as counter:
            step()
        result["counted_flops_per_image"] = counter.get_total_flops() / cfg.data.batch_size
    return result


def sync(accelerator) -> None:
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)
    accelerator.wait_for_everyone()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


# ---------------------------------------------------------------- multi-process


def launch_worker(accelerate_config: str, procs: int, case: Case, data: list[str], args, shard_dir: Path) -> list:
    """This script under `accelerate launch`, one case per data mode; the main process prints JSON lines."""
    worker = {"case": asdict(case), "data": data, "shard_dir": str(shard_dir)}  # data: a list of modes
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", accelerate_config,
           "--num_processes", str(procs), "--main_process_port", str(args.port), __file__,
           "--worker", json.dumps(worker), "--batch", str(args.batch), "--mnist-batch", str(args.mnist_batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "ssl"), str(ROOT), str(ROOT / "benchmarks")]))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or len(lines) != len(data):
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(ln) for ln in lines]


def distributed_configs(on_gpu: bool) -> dict[str, str]:
    ddp = "gpu_multi.yaml" if on_gpu else "cpu_2proc.yaml"
    return {"DDP": str(ROOT / "configs/accelerate" / ddp), "ZeRO-2": str(ROOT / "configs/accelerate/deepspeed_zero2.yaml")}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: 64x64 images, batch 8, 2 timed steps; compile and DDP/ZeRO-2 for the MNIST config only")
    parser.add_argument("--models", nargs="+", default=["vit_ti", "vit_s", "vit_b", "mnist_config"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256, help="per process, ViT cases")
    parser.add_argument("--mnist-batch", type=int, default=512, help="per process, the MNIST config")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8, help="loader worker processes for the shard cases")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument("--compile-models", nargs="+", default=None,
                        help="models also run under torch.compile (default: all; --smoke: the MNIST config)")
    parser.add_argument("--data", choices=["synthetic", "shards", "both"], default="both")
    parser.add_argument("--procs", type=int, default=None, help="processes for DDP vs ZeRO-2 (default: GPU count; --smoke on CPU: 2)")
    parser.add_argument("--dist-models", nargs="+", default=None,
                        help="models for DDP vs ZeRO-2 (default: all; --smoke: the MNIST config)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--count-flops", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cache", default=str(ROOT / "outputs/bench_gpu"), help="where generated shards are kept")
    parser.add_argument("--port", type=int, default=29533)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.image_size, args.batch, args.mnist_batch = 64, 8, 32
        args.steps, args.warmup, args.workers = 2, 1, 1
        args.dist_models = args.dist_models or ["mnist_config"]
        args.compile_models = args.compile_models or ["mnist_config"]  # inductor takes minutes a ViT on 2 cores
        args.procs = 2 if args.procs is None and not torch.cuda.is_available() else args.procs
    if args.worker:
        w = json.loads(args.worker)
        from accelerate import PartialState

        for data in w["data"]:
            result = run_case(Case(**w["case"]), data, False, args, Path(w["shard_dir"]))
            if PartialState().is_main_process:
                print(json.dumps(result), flush=True)
        return
    report(args)


def report(args) -> None:
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    procs = args.procs if args.procs is not None else (torch.cuda.device_count() if on_gpu else 1)
    peak, peak_text = peak_flops(device, args.peak_tflops)
    cache = Path(args.cache)
    print(FORMULA)
    print(ANCHORS)
    print(f"device peak: {peak_text}")
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    data_modes = ["synthetic", "shards"] if args.data == "both" else [args.data]
    rows = []
    for name in args.models:
        case = mnist_case() if name == "mnist_config" else vit_case(name, args.image_size)
        images = max(512, (args.steps + args.warmup + 2) * args.batch * max(procs, 1))
        shard_dir = (mnist_shards(cache / "mnist012") if name == "mnist_config"
                     else jpeg_shards(cache / f"noise{case.image}", case.image, images))
        model_flops = 3 * mae_forward_flops(case)
        compiles = [c for c in compile_modes if not c or args.compile_models is None or name in args.compile_models]
        for data in data_modes:
            for compiled in compiles:
                r = run_case(case, data, compiled, args, shard_dir)
                rows.append(row(case, data, "torch.compile" if compiled else "eager", r, model_flops, peak))
                print(rows[-1], flush=True)
        if procs > 1 and (args.dist_models is None or name in args.dist_models):
            for label, config in distributed_configs(on_gpu).items():
                results = launch_worker(config, procs, case, data_modes, args, shard_dir)
                for data, r in zip(data_modes, results, strict=True):
                    rows.append(row(case, data, f"eager, {label} x{procs}", r, model_flops, peak))
                    print(rows[-1], flush=True)
    body = summary(args, device, peak_text, rows)
    print(body)
    if not args.no_write:
        title = "MAE throughput and MFU, " + ("CPU smoke" if not on_gpu else device_name(device))
        write_section(title, body)


def row(case: Case, data: str, mode: str, r: dict, model_flops: float, peak: float | None) -> str:
    achieved = r["images_per_s"] * model_flops
    mfu = f"{100 * achieved / (peak * r['world']):.1f}%" if peak else "n/a"
    counted = r.get("counted_flops_per_image")
    counted = f"{counted / 1e9:.3g}" if counted else "-"
    return (f"| {case.model} {case.image}px | {data} | {mode} | {r['images_per_s']:.1f} | {model_flops / 1e9:.3g} | "
            f"{counted} | {achieved / 1e12:.3g} | {mfu} |")


def summary(args, device, peak_text: str, rows: list[str]) -> str:
    scope = ("CPU smoke run: it shows every code path runs (eager/compile, shards/synthetic, DDP/ZeRO-2), not GPU "
             "speed; bf16 matmuls have no hardware support on these CPUs. " if device.type == "cpu" else "")
    return (f"{scope}{device_name(device)}, torch {torch.__version__}, bf16 (autocast; DeepSpeed casts the model), "
            f"MAE drop, mask ratio 0.75, AdamW; per-process batch {args.batch} (ViT) / {args.mnist_batch} (MNIST "
            f"config); {args.warmup} warm-up + {args.steps} timed steps; shard cases read JPEG/PNG shards with "
            f"{args.workers} loader worker(s). Device peak: {peak_text}.\n\n"
            f"Model FLOPs: {FORMULA}\n\n{ANCHORS}.\n\n"
            "| model | data | mode | img/s | GFLOP/img (formula, train) | GFLOP/img (counted) | TFLOP/s | MFU |\n"
            "|---|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
