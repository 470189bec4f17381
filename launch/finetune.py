"""Fine-tune, linear-probe or kNN-evaluate a pretrained encoder on the labelled split; report on the test split.

    accelerate launch [--config_file ...] launch/finetune.py --config configs/mnist012/finetune.yaml \
        finetune.pretrained=<runs:/<id> | models:/<name>/<version|alias> | models:/<model_id> | run id
                             | checkpoint folder | pretrain output dir | timm / mae weights file or folder
                             | cached timm model name | none> \
        finetune.mode=finetune|linear|knn [key.sub=value ...]
"""
from __future__ import annotations

import argparse
import sys

from accelerate import PartialState

from vitssl.config import load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.errors import EXIT_INTERRUPTED, exit_code_on_error
from vitssl.engine.finetune import run_finetune
from vitssl.engine.lifetime import die_with_launcher, interrupt_on_stop_signals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. finetune.mode=linear run.epochs=5")
    args = parser.parse_args(argv)
    interrupt_on_stop_signals()  # from here a stop signal unwinds cleanly: exit 143, lock released
    die_with_launcher()
    cfg = exit_code_on_error(lambda: load_config(FinetuneConfig, args.config, args.overrides))
    if isinstance(cfg, int):
        return cfg
    result = exit_code_on_error(lambda: run_finetune(cfg))
    if isinstance(result, int):
        return result
    if result.interrupted:
        if PartialState().is_main_process:
            print("interrupted: run the same command again to resume (run.resume=auto)")
            print(f"mlflow run id: {result.run_id}")
        return EXIT_INTERRUPTED
    if PartialState().is_main_process:
        for split in cfg.finetune.splits(cfg.data):
            print(f"{split} accuracy: {result.metrics.get(f'{split}_accuracy', float('nan')):.4f}")
        print(f"mlflow run id: {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
