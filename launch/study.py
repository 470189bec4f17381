"""The main job: pretrain each objective, then fine-tune, linear-probe and kNN-evaluate it, and compare.

    python launch/study.py [--seeds 0 1 2] [--objectives scratch mae infonce mae_infonce video_mae]
                           [--experiment mnist012-study] [--out outputs/study] [--tracking-uri URI]

Pretraining and fine-tuning run as `accelerate launch` subprocesses (all GPUs when there are any,
one CPU process otherwise); the linear probe and kNN use frozen features of 600 images and run in
this process. Every stage writes into <out>/runs/<objective>-s<seed>[-<mode>]; a finished pretraining or an
evaluated mode is skipped and an interrupted one resumes, so running the study again (say with more
seeds) only does what is missing. Delete a folder to redo that stage. The table is printed at the end
and written to <out>/comparison.{md,csv,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitssl.config import ConfigError, PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.checkpoint import TRAINER_STATE, latest_checkpoint
from vitssl.engine.finetune import run_finetune
from vitssl.eval.compare import compare
from vitssl.tracking import resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[1]

OBJECTIVES = ["scratch", "mae", "infonce", "mae_infonce", "video_mae"]
MODES = ["finetune", "linear", "knn"]


def accelerate_args() -> list[str]:
    """`accelerate launch` options: every GPU of the machine, or one CPU process using all cores."""
    gpus = torch.cuda.device_count()
    if gpus > 1:
        return ["--config_file", str(ROOT / "configs/accelerate/gpu_multi.yaml"), "--num_processes", str(gpus)]
    if gpus == 1:
        return ["--config_file", str(ROOT / "configs/accelerate/gpu_1.yaml")]
    # One thread: these models are tiny, and on a loaded 2-core machine two OpenMP threads per process
    # made a fine-tune epoch 9x slower (7.2 s vs 0.8 s measured) while a second thread gains ~nothing idle.
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


def pretrain_done(config: Path, overrides: list[str]) -> bool:
    """A finished pretraining run is not relaunched: reopening its MLflow run would reset its end time."""
    cfg = load_config(PretrainConfig, config, overrides)
    last = latest_checkpoint(Path(cfg.run.resolved_output_dir()))
    if last is None:
        return False
    state = json.loads((last / TRAINER_STATE).read_text())
    return state["epoch"] >= cfg.run.epochs or (cfg.run.max_steps is not None and state["step"] >= cfg.run.max_steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES, help=f"from {OBJECTIVES}")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--experiment", default="mnist012-study")
    parser.add_argument("--out", default="outputs/study")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--shards", default="data/mnist012")
    parser.add_argument("--configs", default=str(ROOT / "configs/mnist012"),
                        help="folder with <objective>.yaml pretrain configs and finetune.yaml")
    parser.add_argument("--pretrain-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every pretraining run (repeatable)")
    parser.add_argument("--finetune-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every fine-tune / linear / kNN run (repeatable)")
    args = parser.parse_args(argv)
    unknown = [o for o in args.objectives if o not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; choose from {OBJECTIVES}")

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # the in-process linear probe / kNN, as accelerate_args does for the rest
    uri = resolve_tracking_uri(args.tracking_uri)
    out, configs = Path(args.out).resolve(), Path(args.configs)
    common = [f"data.shards={Path(args.shards).resolve()}", f"run.experiment={args.experiment}",
              f"run.tracking_uri={uri}"]
    finetune_yaml = configs / "finetune.yaml"
    failures: list[str] = []
    timings: list[tuple[str, float]] = []
    start = time.perf_counter()
    for seed in args.seeds:
        for objective in args.objectives:
            tag = f"{objective}-s{seed}"
            try:
                if objective == "scratch":
                    pretrained = "none"
                else:
                    config = configs / f"{objective}.yaml"
                    if not config.is_file():
                        raise FileNotFoundError(f"no pretrain config {config}")
                    t0 = time.perf_counter()
                    overrides = common + [f"run.seed={seed}", f"run.output_dir={out}/runs/{tag}", f"run.name={tag}",
                                          *args.pretrain_override]
                    if pretrain_done(config, overrides):
                        print(f"[{tag}] pretrain already finished", flush=True)
                    else:
                        print(f"[{tag}] pretrain ...", flush=True)
                        launch("pretrain.py", config, overrides, out / "logs" / f"{tag}-pretrain.log")
                        timings.append((f"{tag} pretrain", time.perf_counter() - t0))
                    pretrained = str(out / "runs" / tag)
                for mode in args.modes:
                    if (out / "runs" / f"{tag}-{mode}" / "eval_metrics.json").is_file():
                        print(f"[{tag}] {mode} already evaluated", flush=True)
                        continue
                    t0 = time.perf_counter()
                    overrides = common + [f"run.seed={seed}", f"run.output_dir={out}/runs/{tag}-{mode}",
                                          f"run.name={tag}-{mode}", f"finetune.pretrained={pretrained}",
                                          f"finetune.mode={mode}", *args.finetune_override]
                    if mode == "finetune":
                        launch("finetune.py", finetune_yaml, overrides, out / "logs" / f"{tag}-{mode}.log")
                    else:
                        result = run_finetune(load_config(FinetuneConfig, finetune_yaml, overrides))
                        print(f"[{tag}] {mode}: test accuracy {result.metrics['test_accuracy']:.4f}")
                    timings.append((f"{tag} {mode}", time.perf_counter() - t0))
                    print(f"[{tag}] {mode} done in {timings[-1][1]:.0f} s", flush=True)
            except (RuntimeError, FileNotFoundError, ConfigError) as e:
                failures.append(f"{tag}: {e}")
                print(f"[{tag}] FAILED: {e}", file=sys.stderr, flush=True)
    total = time.perf_counter() - start
    print(f"\nstudy wall time {total:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings) + ")")
    try:
        print("\n" + compare(args.experiment, uri, out))
        print(f"written: {out}/comparison.md, comparison.csv, comparison.png")
    except ValueError as e:
        failures.append(f"compare: {e}")
    if failures:
        print("failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
