"""The main job: pretrain each objective, then fine-tune, linear-probe and kNN-evaluate it, and compare.

    python launch/study.py [--seeds 0 1 2] [--objectives scratch mae infonce mae_infonce video_mae]
                           [--experiment mnist012-study] [--out outputs/study] [--tracking-uri URI]
                           [--jobs N] [--extra-data]

The stages run concurrently on long-lived workers (vitssl.study.scheduler): one single-thread
worker per CPU core, or one worker per GPU; a fine-tune waits for its pretraining only. Each worker
imports the libraries once and runs stages in-process with a one-process accelerator. The study is
one MLflow run; every stage is its child (`run.parent_run_id`). Every evaluation reports each split
of the shards among val, test and test_large; pixel baselines (logistic regression, RBF SVM) are
fitted beside. Every stage writes into <out>/runs/<objective>-s<seed>[-<mode>]; a finished
pretraining or an evaluated mode is skipped, so running the study again (say with more seeds) only
does what is missing. Delete a folder to redo that stage. The tables (labelled intervals, paired
tests) are printed at the end and written to <out>/comparison{.md,.csv,_seeds.csv,_paired.csv,.png}.

Tracking: one SQLite file takes the writes of all workers. The study creates the store (schema
included) before any worker starts, and MLflow opens SQLite with a 20 s busy timeout, so the few
small writes of 2-8 workers wait for each other instead of failing; for more workers or several
machines, point --tracking-uri at an `mlflow server`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vitssl.config import ConfigError, PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.checkpoint import TRAINER_STATE, latest_checkpoint
from vitssl.eval.compare import compare
from vitssl.eval.reference import SEEDS_FINETUNE
from vitssl.study import stages
from vitssl.study.scheduler import Job, Outcome, plan_slots, run_jobs
from vitssl.tracking import MlflowRun, resolve_tracking_uri
from vitssl.tracking.lineage import source_tags

ROOT = Path(__file__).resolve().parents[1]

OBJECTIVES = ["scratch", "mae", "infonce", "mae_infonce", "video_mae"]
MODES = ["finetune", "linear", "knn"]
# Milliseconds per training image on one idle core (make run, 2026-11-26): only orders the ready
# jobs, longest chain first, so that the longest fine-tune is not left to run alone at the end.
PRETRAIN_COST = {"mae": 1.0, "video_mae": 2.0, "infonce": 2.1, "mae_infonce": 2.7}
FINETUNE_COST = {"video_mae": 1.8}  # a clip encoder sees each image `frames` times; others 0.9
FROZEN_EVAL_COST = 2.0  # seconds: linear probe or kNN


def pretrain_done(config: Path, overrides: list[str]) -> bool:
    """A finished pretraining run is not relaunched: reopening its MLflow run would reset its end time."""
    cfg = load_config(PretrainConfig, config, overrides)
    last = latest_checkpoint(Path(cfg.run.resolved_output_dir()))
    if last is None:
        return False
    state = json.loads((last / TRAINER_STATE).read_text())
    return state["epoch"] >= cfg.run.epochs or (cfg.run.max_steps is not None and state["step"] >= cfg.run.max_steps)


def eval_splits(shards: Path) -> list[str]:
    manifest = shards / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"--shards {shards}: no manifest.json; make the shards first: python -m data_prep mnist "
                          f"--val-per-class 100 --large-test-rest --unlabeled-rest --out {shards}")
    present = json.loads(manifest.read_text())["splits"]
    return [s for s in stages.EVAL_SPLITS if s in present]


def seeds_protocol(shards: Path) -> bool:
    """The seeds' MNIST 0/1/2 split (embedded digits, 100 train + 100 test a class): their numbers apply."""
    m = json.loads((shards / "manifest.json").read_text())
    o = m.get("options", {})
    return (o.get("source") == "embedded" and o.get("digits") == [0, 1, 2] and o.get("train_per_class") == 100
            and o.get("test_per_class") == 100 and o.get("seed") == 0)


def build_jobs(args, out: Path, configs: Path, common: list[str], splits: list[str], uri: str,
               parent: str) -> list[Job]:
    jobs: list[Job] = []
    finetune_yaml = str(configs / "finetune.yaml")
    engine_options = [f"finetune.eval_splits=[{','.join(splits)}]"]
    fig_off = ["run.figure_every=0"]  # the objectives' figures cost as much as the training steps here
    if (args.pixel_baselines and "val" in splits
            and not (out / "runs" / "pixels_svm_rbf-s0" / "eval_metrics.json").is_file()):
        jobs.append(Job("pixel baselines", stages.pixel_baselines, dict(
            shards=str(Path(args.shards).resolve()), splits=splits, tracking_uri=uri, experiment=args.experiment,
            parent_run_id=parent, seed=0, out=str(out / "runs"),
            class_names=json.loads((Path(args.shards) / "manifest.json").read_text())["classes"]), cost=0.5))
    ft_cfg = load_config(FinetuneConfig, finetune_yaml, common + args.finetune_override)
    ft_thousands = ft_cfg.run.epochs * stages.split_count(ft_cfg.data.shards, ft_cfg.data.split) / 1000
    variants = [("", "train")] + ([("extra", "unlabeled")] if args.extra_data else [])
    pretrained_dir = Path(args.pretrained_dir).resolve() if args.pretrained_dir else out / "runs"
    for seed in args.seeds:
        for objective in args.objectives:
            for variant, split in variants:
                if objective == "scratch" and variant:
                    continue
                tag = f"{objective}{'-' + variant if variant else ''}-s{seed}"
                after: tuple[str, ...] = ()
                pretrained = "none"
                if objective != "scratch":
                    config = configs / f"{objective}.yaml"
                    if not config.is_file():
                        raise ConfigError(f"no pretrain config {config}")
                    overrides = common + [f"run.seed={seed}", f"run.output_dir={pretrained_dir}/{tag}", f"run.name={tag}",
                                          f"data.split={split}", *fig_off, *args.pretrain_override]
                    if variant:
                        overrides.append("run.tags={variant: label-free extra data}")
                    pretrained = str(pretrained_dir / tag)
                    if pretrain_done(config, overrides):
                        print(f"[{tag}] pretrain already finished", flush=True)
                    else:
                        cfg = load_config(PretrainConfig, config, overrides)
                        count = stages.split_count(cfg.data.shards, split)
                        jobs.append(Job(f"{tag} pretrain", stages.pretrain, dict(
                            config=str(config), overrides=overrides, log=str(out / "logs" / f"{tag}-pretrain.log")),
                            cost=cfg.run.epochs * count / 1000 * PRETRAIN_COST.get(objective, 1.0)))
                        after = (f"{tag} pretrain",)
                for mode in args.modes:
                    if (out / "runs" / f"{tag}-{mode}" / "eval_metrics.json").is_file():
                        print(f"[{tag}] {mode} already evaluated", flush=True)
                        continue
                    overrides = common + [f"run.seed={seed}", f"run.output_dir={out}/runs/{tag}-{mode}",
                                          f"run.name={tag}-{mode}", f"finetune.pretrained={pretrained}",
                                          f"finetune.mode={mode}", *engine_options, *fig_off]
                    if variant:
                        overrides.append("run.tags={variant: label-free extra data}")
                    jobs.append(Job(f"{tag} {mode}", stages.finetune, dict(
                        config=finetune_yaml, overrides=overrides + args.finetune_override,
                        log=str(out / "logs" / f"{tag}-{mode}.log")), after=after,
                        cost=ft_thousands * FINETUNE_COST.get(objective, 0.9) if mode == "finetune"
                        else FROZEN_EVAL_COST))
    return jobs


def report(outcome: Outcome) -> None:
    if outcome.status == "done" and isinstance(outcome.value, dict) and "images_per_s" in outcome.value:
        v = outcome.value
        accuracy = {k: f"{100 * x:.2f}" for k, x in v.get("metrics", {}).items()
                    if k.endswith("_accuracy") and k.split("_accuracy")[0] in stages.EVAL_SPLITS}
        print(f"[{outcome.name}] {outcome.seconds:.0f} s, {v['images_per_s']:.0f} images/s"
              + (f", accuracy % {accuracy}" if accuracy else ""), flush=True)
    elif outcome.status == "done":
        print(f"[{outcome.name}] {outcome.seconds:.0f} s", flush=True)
    else:
        print(f"[{outcome.name}] {outcome.status.upper()}: {outcome.error}", file=sys.stderr, flush=True)


def log_comparison(tracker: MlflowRun, out: Path) -> None:
    """The comparison's files (tables, per-seed values, paired tests) as artifacts of the study run."""
    from vitssl.eval.tables import OUTPUTS

    for name in OUTPUTS.values():
        tracker.log_artifact(out / name, "comparison")


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
    parser.add_argument("--jobs", type=int, default=None, help="concurrent stages (default: CPU cores, or GPUs; more than the GPUs share them)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker (no GPU)")
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
    unknown = [o for o in args.objectives if o not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; choose from {OBJECTIVES}")
    if args.jobs is not None and args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be at least 1, got {args.jobs} and {args.threads}")

    start = time.perf_counter()
    uri = resolve_tracking_uri(args.tracking_uri)
    out, configs, shards = Path(args.out).resolve(), Path(args.configs), Path(args.shards).resolve()
    try:
        splits = eval_splits(shards)
        tracker = MlflowRun(True, uri, args.experiment)  # creates the store before any worker opens it
        parent = tracker.start("study", source_tags({"vitssl.stage": "study", "command": " ".join(sys.argv)}))
        common = [f"data.shards={shards}", f"run.experiment={args.experiment}", f"run.tracking_uri={uri}",
                  f"run.parent_run_id={parent}"]
        jobs = build_jobs(args, out, configs, common, splits, uri, parent)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    slots = plan_slots(args.jobs, args.threads)
    os.environ["TQDM_DISABLE"] = "1"  # the workers' progress bars; tqdm reads it when imported
    print(f"study run {parent}: {len(jobs)} stages on {slots.workers} worker(s) x {slots.threads} thread(s)"
          f"{f' on {slots.gpus} GPU(s)' if slots.gpus else ''}; evaluated on {', '.join(splits)}; logs in {out}/logs",
          flush=True)
    outcomes = run_jobs(jobs, slots, report)
    total = time.perf_counter() - start
    failures = [f"{o.name}: {o.status} {o.error}" for o in outcomes.values() if o.status != "done"]
    tracker.log_metrics({"wall_time_s": total}, 0)
    print(f"\nstudy wall time {total:.0f} s ({len(outcomes)} stages on {slots.workers} workers)")
    try:
        reference = SEEDS_FINETUNE if seeds_protocol(shards) else None
        print("\n" + compare(args.experiment, uri, out, reference=reference))
        log_comparison(tracker, out)
        print(f"written: {out}/comparison.md, comparison.csv, comparison_seeds.csv, comparison_paired.csv, "
              "comparison.png (also the study run's artifacts)")
    except ValueError as e:
        failures.append(f"compare: {e}")
    tracker.end("FAILED" if failures else "FINISHED")
    if failures:
        print("failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
