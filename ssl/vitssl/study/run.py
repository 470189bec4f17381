"""The study from start to table: one MLflow run for the study, its stages (vitssl.study.plan) run on
this machine's workers (vitssl.study.scheduler) or as SLURM jobs (vitssl.study.on_slurm), then the
comparison table."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from vitssl.config import ConfigError
from vitssl.data import DataError
from vitssl.eval.compare import compare
from vitssl.eval.reference import SEEDS_FINETUNE
from vitssl.objectives import OBJECTIVES
from vitssl.study import stages
from vitssl.study.plan import StudyOptions, build_jobs, eval_splits, resolve_shards, seeds_protocol
from vitssl.study.scheduler import Outcome, plan_slots, run_jobs
from vitssl.tracking import MlflowRun, resolve_tracking_uri
from vitssl.tracking.lineage import source_tags


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


def run_study(opts: StudyOptions, tracking_uri: str | None, executor: str = "local", jobs: int | None = None,
              threads: int = 1, resources=None) -> int:
    """Exit code: 0 when every stage and the table succeeded, 1 when some failed, 2 on bad input.
    `executor`: local (this machine's workers, `jobs` x `threads`) or slurm (one job per stage with
    `resources`, a vitssl.slurm.jobs.Resources)."""
    start = time.perf_counter()
    uri = resolve_tracking_uri(tracking_uri)
    out = Path(opts.out).resolve()
    shards = resolve_shards(opts.shards)
    try:
        splits = eval_splits(shards)
        tracker = MlflowRun(True, uri, opts.experiment)  # creates the store before any stage opens it
        parent = tracker.start("study", source_tags({"vitssl.stage": "study", "command": " ".join(sys.argv)}))
        common = [f"data.shards={shards}", f"run.experiment={opts.experiment}", f"run.tracking_uri={uri}",
                  f"run.parent_run_id={parent}"]
        graph = build_jobs(opts, out, common, splits, uri, parent)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ["TQDM_DISABLE"] = "1"  # the stages' progress bars; tqdm reads it when imported
    if executor == "slurm":
        from vitssl.study.on_slurm import run_jobs_on_slurm

        print(f"study run {parent}: {len(graph)} stages as SLURM jobs; evaluated on {', '.join(splits)}; "
              f"logs in {out}/logs and {out}/slurm", flush=True)
        outcomes, per_job = run_jobs_on_slurm(graph, resources, out / "slurm", report=report)
        where = f"as SLURM jobs, {per_job:.2f} s to submit each"
    else:
        slots = plan_slots(jobs, threads)
        print(f"study run {parent}: {len(graph)} stages on {slots.workers} worker(s) x {slots.threads} thread(s)"
              f"{f' on {slots.gpus} GPU(s)' if slots.gpus else ''}; evaluated on {', '.join(splits)}; "
              f"logs in {out}/logs", flush=True)
        outcomes = run_jobs(graph, slots, report)
        where = f"on {slots.workers} workers"
    total = time.perf_counter() - start
    failures = [f"{o.name}: {o.status} {o.error}" for o in outcomes.values() if o.status != "done"]
    tracker.log_metrics({"wall_time_s": total}, 0)
    print(f"\nstudy wall time {total:.0f} s ({len(outcomes)} stages {where})")
    try:
        reference = SEEDS_FINETUNE if seeds_protocol(shards) else None
        print("\n" + compare(opts.experiment, uri, out, reference=reference, order=list(OBJECTIVES)))
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
