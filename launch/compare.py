"""Compare objectives of one MLflow experiment: fine-tune / linear / kNN accuracy and pretraining cost.

    python launch/compare.py --experiment mnist012 [more ...] [--tracking-uri URI] [--out DIR] [--parent-run ID]

Prints a markdown table per evaluation split (test, test_large, val), each captioned with what its
brackets are (95% Wilson interval of the errors pooled over seeds) and followed by paired tests
(exact McNemar against scratch and the best pixel baseline, on the runs' per-image predictions);
with --out also writes comparison.md, comparison.csv (one line per objective, mode and split),
comparison_seeds.csv (one per run), comparison_paired.csv (one per paired test and seed) and
comparison.png. --parent-run keeps only the runs of one study. Logs nothing to MLflow.
"""
from __future__ import annotations

import argparse
import sys

from vitssl.eval.compare import compare
from vitssl.eval.reference import SEEDS_FINETUNE
from vitssl.objectives import OBJECTIVES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, nargs="+",
                        help="one or more: the latest run of each objective, mode and seed counts across them")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--out", default=None, help="folder for comparison.md / .csv / .png")
    parser.add_argument("--parent-run", default=None, help="only the children of this MLflow run (a study)")
    parser.add_argument("--seeds-reference", action="store_true",
                        help="print the seeds' fine-tune numbers beside test (their MNIST 0/1/2 protocol only)")
    args = parser.parse_args(argv)
    try:
        experiment = args.experiment[0] if len(args.experiment) == 1 else args.experiment
        table = compare(experiment, args.tracking_uri, args.out, args.parent_run,
                        SEEDS_FINETUNE if args.seeds_reference else None, order=list(OBJECTIVES))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
