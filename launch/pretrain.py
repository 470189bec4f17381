"""Pretrain a ViT with a pretext objective.

    accelerate launch [--config_file configs/accelerate/cpu_2proc.yaml] launch/pretrain.py \
        --config configs/mnist012/mae.yaml [key.sub=value ...]
"""
from __future__ import annotations

import argparse
import sys

from accelerate import PartialState

from vitssl.config import PretrainConfig, load_config
from vitssl.engine.errors import EXIT_INTERRUPTED, exit_code_on_error
from vitssl.engine.lifetime import die_with_launcher, interrupt_on_stop_signals
from vitssl.engine.pretrain import run_pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 run.epochs=2")
    args = parser.parse_args(argv)
    interrupt_on_stop_signals()  # from here a stop signal unwinds cleanly: exit 143, lock released
    die_with_launcher()
    result = exit_code_on_error(lambda: run_pretrain(load_config(PretrainConfig, args.config, args.overrides)))
    if isinstance(result, int):
        return result
    if PartialState().is_main_process:
        if result.interrupted:
            print("interrupted: run the same command again to resume (run.resume=auto)")
        print(f"mlflow run id: {result.state.mlflow_run_id}")
        print(f"checkpoint: {result.checkpoint}")
    return EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
