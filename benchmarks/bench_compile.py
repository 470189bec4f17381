"""torch.compile vs eager for the study's MAE ViT on CPU: CPU milliseconds per training step.

    python benchmarks/bench_compile.py [--config configs/mnist012/mae.yaml] [--steps 30] [--rounds 3] [--json]

One thread; a training step is forward + backward + fused AdamW on a fixed random batch of the config's
batch size. Compilation is done in a warm-up outside the timing. CPU time of this process
(getrusage(RUSAGE_SELF)), not wall time, so a loaded machine does not skew the ratio; eager and
compiled are measured in alternating rounds, median of rounds.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
from pathlib import Path

import torch

from vitssl.config import PretrainConfig, load_config
from vitssl.objectives import build_objective

ROOT = Path(__file__).resolve().parents[1]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def trainer_step(cfg: PretrainConfig, compiled: bool):
    torch.manual_seed(0)
    objective = build_objective(cfg)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=True)
    model = torch.compile(objective) if compiled else objective
    b, c, s = cfg.data.batch_size, cfg.data.channels, cfg.data.image_size
    batch = {"image": torch.rand(b, c, s, s), "mask_noise": torch.rand(b, objective.encoder.num_patches)}

    def step() -> None:
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mnist012/mae.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(PretrainConfig, ROOT / args.config)
    steps = {"eager": trainer_step(cfg, False), "torch.compile": trainer_step(cfg, True)}
    for step in steps.values():
        for _ in range(5):  # compiles the forward and backward graphs
            step()
    ms: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = cpu_s()
            for _ in range(args.steps):
                step()
            ms[name].append(1e3 * (cpu_s() - t0) / args.steps)
    rows = {name: statistics.median(v) for name, v in ms.items()}
    for name, value in rows.items():
        row = {"case": name, "config": args.config, "batch_size": cfg.data.batch_size, "cpu_ms_per_step": value,
               "vs_eager": rows["eager"] / value}
        print(json.dumps(row) if args.json else f"{name:14s} {value:8.2f} CPU ms/step  ({row['vs_eager']:.2f}x eager)")


if __name__ == "__main__":
    main()
