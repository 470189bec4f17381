"""The MLflow side of the comparison: find an experiment's finished evaluations and group them into
rows (objective, variant) of per-seed scores, with each run's per-image predictions when it logged them.

Reads MLflow only (search_runs over tags), so it works the same on a SQLite store and an `mlflow
server`. A run reports `<split>_accuracy`, `<split>_errors` and `<split>_n` for every split it
evaluated (older runs: `test_accuracy` only). For each (objective, variant, mode, seed) the latest
finished run counts, across all the experiments given. `parent_run` keeps only the children of one study run. The `variant` tag
(launch/sweep.py, or run.tags in a config) tells apart runs of one objective with other settings.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vitssl.eval.predictions import ARTIFACT as PREDICTIONS
from vitssl.eval.predictions import SplitOutcome, from_csv
from vitssl.eval.statistics import mean_std

MODES = ("finetune", "linear", "knn")
SPLITS = ("test", "test_large", "val")  # the seeds' 300-image split first: the one their numbers are on
STAGES = ("finetune", "baseline")  # baseline: a classifier on pixels; its accuracy goes in the fine-tune column
SCRATCH = "none"  # the objective tag of an encoder that was never pretrained


@dataclass
class Score:
    accuracy: float
    errors: float | None = None
    n: float | None = None
    seed: str = "0"
    run_id: str = ""
    outcome: SplitOutcome | None = None  # per-image labels and predictions, when the run logged them


@dataclass
class Row:
    objective: str
    variant: str = ""
    stage: str = "finetune"  # finetune | baseline
    scores: dict[tuple[str, str], list[Score]] = field(default_factory=dict)  # (mode, split) -> one per seed
    seeds: set[str] = field(default_factory=set)
    pretrain_time_s: list[float] = field(default_factory=list)
    pretrain_images_per_s: list[float] = field(default_factory=list)

    def accuracy(self, mode: str, split: str = "test") -> list[float]:
        return [s.accuracy for s in self.scores.get((mode, split), [])]


def split_scores(metrics: dict[str, float]) -> dict[str, Score]:
    """split -> Score from a run's metrics (`<split>_accuracy`, `_errors`, `_n`)."""
    out = {}
    for split in SPLITS:
        if f"{split}_accuracy" in metrics:
            out[split] = Score(metrics[f"{split}_accuracy"], metrics.get(f"{split}_errors"), metrics.get(f"{split}_n"))
    return out


def _client(tracking_uri: str | None):
    import mlflow

    from vitssl.tracking import resolve_tracking_uri

    return mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def search(experiment: str | list[str], tracking_uri: str | None = None, parent_run: str | None = None) -> list:
    """The finished fine-tune / linear / kNN / baseline runs of the experiment(s), newest first."""
    client = _client(tracking_uri)
    ids = []
    for name in [experiment] if isinstance(experiment, str) else experiment:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise ValueError(f"no MLflow experiment {name!r} in {client.tracking_uri}")
        ids.append(found.experiment_id)
    runs = []
    for stage in STAGES:  # MLflow's filter has no IN for tags: one search per stage
        query = f"tags.`vitssl.stage` = '{stage}' and attributes.status = 'FINISHED'"
        if parent_run:
            query += f" and tags.`mlflow.parentRunId` = '{parent_run}'"
        runs += client.search_runs(ids, query, max_results=50_000)
    return sorted(runs, key=lambda r: r.info.start_time, reverse=True)


def _pretrain_cost(client, run_id: str) -> tuple[float | None, float | None]:
    """(wall seconds from start to end, median logged images/s) of a pretraining run."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None, None
    seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
    ips = [m.value for m in client.get_metric_history(run_id, "images_per_s")]
    return seconds, statistics.median(ips) if ips else None


@contextlib.contextmanager
def _quiet_downloads():
    """No progress bar per downloaded file: the comparison reads one small file per run."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as bar

    before = os.environ.get(bar.name)
    os.environ[bar.name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(bar.name, None)
        else:
            os.environ[bar.name] = before


def load_predictions(client, run_id: str) -> dict[str, SplitOutcome]:
    """The run's eval/predictions.csv by split; empty when it logged none (runs from before it existed)."""
    folder = PREDICTIONS.rsplit("/", 1)[0]
    if not any(a.path == PREDICTIONS for a in client.list_artifacts(run_id, folder)):
        return {}
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        return from_csv(Path(client.download_artifacts(run_id, PREDICTIONS, tmp)).read_text())


def collect(experiment: str | list[str], tracking_uri: str | None = None, parent_run: str | None = None,
            order: list[str] | None = None) -> list[Row]:
    """Rows of per-seed scores: baselines first, then scratch, then the objectives in `order` (others
    after them by name); within an objective, variants by fine-tune, then linear, then kNN accuracy
    on `val` (on the first test split only for runs that have no `val`)."""
    client = _client(tracking_uri)
    latest: dict[tuple[str, str, str, str], object] = {}
    for run in search(experiment, tracking_uri, parent_run):  # newest first: the first seen of a key is the latest
        t = run.data.tags
        if not split_scores(run.data.metrics):
            continue
        mode = "finetune" if t.get("vitssl.stage") == "baseline" else t.get("vitssl.mode", "?")
        key = (t.get("vitssl.objective", SCRATCH), t.get("variant", ""), mode, t.get("vitssl.seed", "0"))
        latest.setdefault(key, run)
    rows: dict[tuple[str, str], Row] = {}
    pretrain_seen: set[str] = set()
    for (objective, variant, mode, seed), run in latest.items():
        row = rows.setdefault((objective, variant), Row(objective, variant, run.data.tags.get("vitssl.stage", "finetune")))
        outcomes = load_predictions(client, run.info.run_id)
        for split, score in split_scores(run.data.metrics).items():
            score.seed, score.run_id, score.outcome = seed, run.info.run_id, outcomes.get(split)
            row.scores.setdefault((mode, split), []).append(score)
        row.seeds.add(seed)
        parent = run.data.tags.get("vitssl.pretrain_run_id", "none")
        if parent != "none" and parent not in pretrain_seen:
            pretrain_seen.add(parent)
            seconds, ips = _pretrain_cost(client, parent)
            if seconds is not None:
                row.pretrain_time_s.append(seconds)
            if ips is not None:
                row.pretrain_images_per_s.append(ips)
    for row in rows.values():
        for scores in row.scores.values():
            scores.sort(key=lambda s: (len(s.seed), s.seed))
    rank = {name: i for i, name in enumerate(order or [])}

    def place(r: Row) -> tuple:
        group = 0 if r.stage == "baseline" else 1 if r.objective == SCRATCH else 2
        return group, rank.get(r.objective, len(rank)), r.objective

    def score(r: Row) -> list[float]:  # higher is better; a missing mode ranks last
        present = {sp for _, sp in r.scores}
        split = "val" if "val" in present else next((sp for sp in SPLITS if sp in present), "test")
        return [-mean_std(r.accuracy(m, split))[0] if (m, split) in r.scores else 0.0 for m in MODES]

    return sorted(rows.values(), key=lambda r: (place(r), score(r)))
