"""Pretrain a ViT with a pretext objective.

    accelerate launch [--config_file configs/accelerate/cpu_2proc.yaml] launch/pretrain.py \
        --config configs/mnist012/mae.yaml [key.sub=value ...]
"""
from __future__ import annotations

import argparse
import sys

from accelerate import PartialState

from vitssl.config import PretrainConfig, load_config
from vitssl.engine.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, USER_ERRORS
from vitssl.engine.lifetime import die_with_launcher
from vitssl.engine.pretrain import run_pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 run.epochs=2")
    args = parser.parse_args(argv)
    die_with_launcher()
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        result = run_pretrain(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (setup, evaluation): nothing to save
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if PartialState().is_main_process:
        if result.interrupted:
            print("interrupted: run the same command again to resume (run.resume=auto)")
        print(f"mlflow run id: {result.state.mlflow_run_id}")
        print(f"checkpoint: {result.checkpoint}")
    return EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
