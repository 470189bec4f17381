"""The main job: pretrain each objective, then fine-tune, linear-probe and kNN-evaluate it, and compare.

    python launch/study.py [--seeds 0 1 2] [--objectives scratch mae infonce mae_infonce video_mae]
                           [--experiment mnist012-study] [--out outputs/study] [--tracking-uri URI]
                           [--jobs N] [--extra-data] [--executor local|slurm]

--executor local (the default): the stages run concurrently on long-lived workers on this machine
(vitssl.study.scheduler): one single-thread worker per CPU core, or one worker per GPU; a fine-tune
waits for its pretraining only. Each worker imports the libraries once and runs stages in-process
with a one-process accelerator. --executor slurm: each stage is a SLURM job asking for
--cpus-per-stage, --gpus-per-stage, --mem, --time, a fine-tune depending on its pretraining
(afterok); a failed or cancelled job cancels only its dependents (vitssl.study.on_slurm).

The study is one MLflow run; every stage is its child (`run.parent_run_id`). Every evaluation reports
each split of the shards among val, test and test_large; pixel baselines (logistic regression, RBF
SVM) are fitted beside. Every stage writes into <out>/runs/<objective>-s<seed>[-<mode>]; a finished
pretraining or an evaluated mode is skipped, so running the study again (say with more seeds) only
does what is missing. Delete a folder to redo that stage. The tables (labelled intervals, paired
tests) are printed at the end and written to <out>/comparison{.md,.csv,_seeds.csv,_paired.csv,.png}. --shards takes what data.shards takes: a folder, a base
URL (http://host/mnist012), a shard URL list.

Tracking: one SQLite file takes the writes of all workers. The study creates the store (schema
included) before any worker starts, and MLflow opens SQLite with a 20 s busy timeout, so the few
small writes of 2-8 workers wait for each other instead of failing; for more workers or several
machines (SLURM), point --tracking-uri at an `mlflow server`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitssl.slurm.jobs import Resources
from vitssl.study.plan import MODES, StudyOptions, study_objectives
from vitssl.study.run import run_study

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OBJECTIVES = ["scratch", "mae", "infonce", "mae_infonce", "video_mae"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--objectives", nargs="+", default=DEFAULT_OBJECTIVES,
                        help="scratch, or any objective of the registry with a <name>.yaml in --configs")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--experiment", default="mnist012-study")
    parser.add_argument("--out", default="outputs/study")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--shards", default="data/mnist012")
    parser.add_argument("--configs", default=str(ROOT / "configs/mnist012"),
                        help="folder with <objective>.yaml pretrain configs and finetune.yaml")
    parser.add_argument("--executor", choices=["local", "slurm"], default="local")
    parser.add_argument("--jobs", type=int, default=None, help="local: concurrent stages (default: CPU cores, or GPUs; more than the GPUs share them)")
    parser.add_argument("--threads", type=int, default=1, help="local: CPU threads per worker (no GPU)")
    slurm = parser.add_argument_group("--executor slurm: what each stage's job asks for")
    slurm.add_argument("--cpus-per-stage", type=int, default=1)
    slurm.add_argument("--gpus-per-stage", type=int, default=0)
    slurm.add_argument("--mem", default=None, help="memory per stage, as sbatch takes it (e.g. 16G)")
    slurm.add_argument("--time", type=int, default=60, help="time limit of each stage, minutes")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    parser.add_argument("--extra-data", action="store_true",
                        help="also pretrain on the shards' 'unlabeled' split (label-free extra data), its own rows")
    parser.add_argument("--pixel-baselines", action=argparse.BooleanOptionalAction, default=True,
                        help="fit logistic regression and an RBF SVM on raw pixels (needs a val split; an SVM "
                             "grid on tens of thousands of images takes long: --no-pixel-baselines)")
    parser.add_argument("--pretrained-dir", default=None,
                        help="where the pretrainings live (default <out>/runs): evaluate another study's encoders "
                             "on other shards, say with fewer labels; finished ones are not rerun")
    parser.add_argument("--pretrain-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every pretraining run (repeatable)")
    parser.add_argument("--finetune-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every fine-tune / linear / kNN run (repeatable)")
    args = parser.parse_args(argv)
    known = study_objectives(Path(args.configs))
    unknown = [o for o in args.objectives if o not in known]
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; choose from {known}")
    if args.jobs is not None and args.jobs < 1 or args.threads < 1 or args.cpus_per_stage < 1 or args.time < 1:
        parser.error("--jobs, --threads, --cpus-per-stage and --time must be at least 1")
    opts = StudyOptions(objectives=args.objectives, seeds=args.seeds, modes=args.modes, shards=args.shards,
                        configs=args.configs, out=args.out, experiment=args.experiment, extra_data=args.extra_data,
                        pixel_baselines=args.pixel_baselines, pretrained_dir=args.pretrained_dir,
                        pretrain_override=args.pretrain_override, finetune_override=args.finetune_override)
    resources = Resources(gpus_per_node=args.gpus_per_stage, cpus_per_task=args.cpus_per_stage, mem=args.mem,
                          time=args.time, partition=args.partition, account=args.account, qos=args.qos)
    return run_study(opts, args.tracking_uri, args.executor, args.jobs, args.threads, resources)


if __name__ == "__main__":
    sys.exit(main())
