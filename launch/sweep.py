"""Grid sweep: run every combination of the given override values into one MLflow experiment.

    python launch/sweep.py --config configs/mnist012/supervised_vit.yaml \
        --grid optim.lr=1e-3,3e-3 run.epochs=30,60 model.embed_dim=64,128 [--set data.shards=...] \
        [--script finetune|pretrain] [--out runs/sweep] [--dry-run]

Each combination is one `accelerate launch` subprocess (every GPU, or one single-thread CPU process) with
run.output_dir=<out>/<variant>, and the MLflow tag `variant` naming its values (e.g.
"lr=0.001 epochs=30 embed_dim=64"), so `launch/compare.py --experiment <run.experiment>` lists and
ranks the combinations. Every combination's config is validated before the first run starts.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from pathlib import Path

import torch

from vitssl.config import ConfigError, PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.config.load import parse_override

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"finetune": FinetuneConfig, "pretrain": PretrainConfig}


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """["optim.lr=1e-3,3e-3", ...] -> [("optim.lr", ["1e-3", "3e-3"]), ...]."""
    grid = []
    for item in items:
        parse_override(item)  # same key syntax as any override
        key, values = item.split("=", 1)
        grid.append((key, [v for v in values.split(",") if v]))
    return grid


def combinations(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination as a list of overrides, first key varying slowest."""
    keys = [k for k, _ in grid]
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)] for values in itertools.product(*(v for _, v in grid))]


def variant_name(overrides: list[str]) -> str:
    """["optim.lr=1e-3", "run.epochs=30"] -> "lr=1e-3 epochs=30"."""
    return " ".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1] for o in overrides)


def accelerate_args() -> list[str]:
    """`accelerate launch` options: every GPU of the machine, or one single-thread CPU process (the
    models are tiny: more threads only fight over a small machine's cores)."""
    gpus = torch.cuda.device_count()
    if gpus > 1:
        return ["--config_file", str(ROOT / "configs/accelerate/gpu_multi.yaml"), "--num_processes", str(gpus)]
    if gpus == 1:
        return ["--config_file", str(ROOT / "configs/accelerate/gpu_1.yaml")]
    return ["--config_file", str(ROOT / "configs/accelerate/cpu_1proc.yaml"), "--num_cpu_threads_per_process", "1"]


def launch(script: str, config: Path, overrides: list[str], log: Path) -> None:
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", *accelerate_args(),
           str(ROOT / "launch" / script), "--config", str(config), *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{script} failed (exit {code}); log {log}:\n" + "\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--grid", nargs="+", required=True, help="key=v1,v2,... (one per swept key)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides shared by every run")
    parser.add_argument("--script", choices=sorted(SCHEMAS), default="finetune")
    parser.add_argument("--out", default="runs/sweep", help="each run writes to <out>/<variant>")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    args = parser.parse_args(argv)
    runs = []
    try:
        for combo in combinations(parse_grid(args.grid)):
            variant = variant_name(combo)
            slug = variant.replace(" ", "_").replace("=", "")
            overrides = [*args.set, *combo, f"run.output_dir={Path(args.out) / slug}", f"run.tags.variant={variant}"]
            load_config(SCHEMAS[args.script], args.config, overrides)
            runs.append((variant, overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = []
    for i, (variant, overrides) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {variant}", flush=True)
        if args.dry_run:
            continue
        try:
            launch(f"{args.script}.py", Path(args.config), overrides, Path(args.out) / "logs" / f"{i:03d}.log")
        except RuntimeError as e:
            print(e, file=sys.stderr)
            failed.append(variant)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
