"""The comparison table of an experiment: objective x fine-tune / linear / kNN accuracy on each
evaluation split, with 95% Wilson intervals, the pixel baselines and the seeds' numbers beside.

Reads MLflow only (search_runs over tags), so it works the same on a SQLite store and an
`mlflow server`, and the same table comes out of `mlflow.search_runs` by hand (see README).
A run reports `<split>_accuracy`, `<split>_errors` and `<split>_n` for every split it evaluated
(older runs: `test_accuracy` only). For each (objective, variant, mode, seed) the latest finished
run counts; several seeds give mean ± std (sample std, n - 1) and the interval of the errors pooled
over seeds. `--parent-run` keeps only the children of one study run. The `variant` tag
(launch/sweep.py, or run.tags in a config) tells apart runs of one objective with other settings;
within an objective, variants are ranked by fine-tune accuracy, then linear, then kNN.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("finetune", "linear", "knn")
SPLITS = ("test", "test_large", "val")  # the seeds' 300-image split first: the one their numbers are on
SPLIT_TITLES = {"test": "test", "test_large": "test_large: images no stage ever saw",
                "val": "val: every choice was made on it"}
ORDER = ("pixels_logreg", "pixels_svm_rbf", "none", "distill", "mae", "infonce", "mae_infonce", "video_mae",
         "cnn_autoencoder", "rotation", "simclr")
LABELS = {"none": "none (scratch)", "pixels_logreg": "pixels: logistic regression",
          "pixels_svm_rbf": "pixels: RBF SVM"}
# The seeds' fine-tune test accuracy (%) on their MNIST 0/1/2 split (100 train + 100 test a class):
# `reference` for that protocol only.
SEEDS_FINETUNE = {"mae": 99.0, "infonce": 98.67, "mae_infonce": 98.0, "video_mae": 98.0}
STAGES = ("finetune", "baseline")  # baseline: a classifier on pixels; its accuracy goes in the fine-tune column


@dataclass
class Score:
    accuracy: float
    errors: float | None = None
    n: float | None = None


@dataclass
class Row:
    objective: str
    variant: str = ""
    scores: dict[tuple[str, str], list[Score]] = field(default_factory=dict)  # (mode, split) -> one per seed
    seeds: set[str] = field(default_factory=set)
    pretrain_time_s: list[float] = field(default_factory=list)
    pretrain_images_per_s: list[float] = field(default_factory=list)

    def accuracy(self, mode: str, split: str = "test") -> list[float]:
        return [s.accuracy for s in self.scores.get((mode, split), [])]


def wilson(errors: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy with `errors` wrong out of `n`."""
    p = 1 - errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pooled_interval(scores: list[Score]) -> tuple[float, float] | None:
    if not scores or any(s.errors is None or not s.n for s in scores):
        return None
    return wilson(sum(s.errors for s in scores), sum(s.n for s in scores))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    mean, std = _mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _fmt_scores(scores: list[Score], with_interval: bool) -> str:
    text = _fmt([s.accuracy for s in scores], 100)
    interval = pooled_interval(scores) if with_interval else None
    return text if interval is None else f"{text} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


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


def split_scores(metrics: dict[str, float]) -> dict[str, Score]:
    """split -> Score from a run's metrics (`<split>_accuracy`, `_errors`, `_n`)."""
    out = {}
    for split in SPLITS:
        if f"{split}_accuracy" in metrics:
            out[split] = Score(metrics[f"{split}_accuracy"], metrics.get(f"{split}_errors"), metrics.get(f"{split}_n"))
    return out


def search(experiment: str, tracking_uri: str | None = None, parent_run: str | None = None) -> list:
    """The finished fine-tune / linear / kNN / baseline runs of the experiment, newest first."""
    import mlflow

    from vitssl.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} in {uri}")
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    runs = []
    for stage in STAGES:  # MLflow's filter has no IN for tags: one search per stage
        query = f"tags.`vitssl.stage` = '{stage}' and attributes.status = 'FINISHED'"
        if parent_run:
            query += f" and tags.`mlflow.parentRunId` = '{parent_run}'"
        runs += client.search_runs([exp_id], query, max_results=50_000)
    return sorted(runs, key=lambda r: r.info.start_time, reverse=True)


def collect(experiment: str, tracking_uri: str | None = None, parent_run: str | None = None) -> list[Row]:
    import mlflow

    from vitssl.tracking import resolve_tracking_uri

    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    latest: dict[tuple[str, str, str, str], object] = {}
    for run in search(experiment, tracking_uri, parent_run):  # newest first: the first seen of a key is the latest
        t = run.data.tags
        if not split_scores(run.data.metrics):
            continue
        mode = "finetune" if t.get("vitssl.stage") == "baseline" else t.get("vitssl.mode", "?")
        key = (t.get("vitssl.objective", "none"), t.get("variant", ""), mode, t.get("vitssl.seed", "0"))
        latest.setdefault(key, run)
    rows: dict[tuple[str, str], Row] = {}
    pretrain_seen: set[str] = set()
    for (objective, variant, mode, seed), run in latest.items():
        row = rows.setdefault((objective, variant), Row(objective, variant))
        for split, score in split_scores(run.data.metrics).items():
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
    rank = {name: i for i, name in enumerate(ORDER)}

    def score(r: Row) -> list[float]:  # higher is better; a missing mode ranks last
        return [-_mean_std(r.accuracy(m))[0] if (m, "test") in r.scores else 0.0 for m in MODES]

    return sorted(rows.values(), key=lambda r: (rank.get(r.objective, len(ORDER)), r.objective, score(r)))


def label(row: Row) -> str:
    name = LABELS.get(row.objective, row.objective)
    return f"{name} [{row.variant}]" if row.variant else name


HEADER = ["objective", "seeds", "finetune acc (%)", "linear acc (%)", "kNN acc (%)", "pretrain time (s)",
          "pretrain images/s"]


def splits_of(rows: list[Row]) -> list[str]:
    present = {split for r in rows for _, split in r.scores}
    return [s for s in SPLITS if s in present]


def _title(rows: list[Row], split: str) -> str:
    ns = {s.n for r in rows for (_, sp), scores in r.scores.items() if sp == split for s in scores if s.n}
    size = f" ({int(ns.pop()):,} images)" if len(ns) == 1 else ""
    return SPLIT_TITLES.get(split, split) + size


def to_markdown(rows: list[Row], reference: dict[str, float] | None = None) -> str:
    """One table per evaluation split; the splits other than test give the 95% Wilson interval of the
    pooled errors in brackets; `reference` (objective -> fine-tune test accuracy %, e.g. the seeds'
    SEEDS_FINETUNE on their protocol) adds a column to the test table."""
    splits = splits_of(rows)
    parts = []
    for split in splits:
        with_reference = reference is not None and split == "test"
        header = HEADER + (["seeds' fine-tune (%)"] if with_reference else [])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            if not any(sp == split for _, sp in r.scores):
                continue
            cells = [label(r), str(len(r.seeds))]
            cells += [_fmt_scores(r.scores.get((m, split), []), split != "test") for m in MODES]
            cells += [_fmt(r.pretrain_time_s, digits=1), _fmt(r.pretrain_images_per_s, digits=0)]
            if with_reference:
                cells.append(f"{reference[r.objective]:.2f}" if r.objective in reference and not r.variant else "–")
            lines.append("| " + " | ".join(cells) + " |")
        table = "\n".join(lines) + "\n"
        parts.append(table if len(splits) == 1 else f"{_title(rows, split)}\n\n{table}")
    return "\n".join(parts)


CSV_FIELDS = ["objective", "variant", "mode", "split", "seeds", "accuracy_mean", "accuracy_std", "errors", "n",
              "wilson_low", "wilson_high", "pretrain_time_s_mean", "pretrain_images_per_s_mean"]


def write_csv(rows: list[Row], path: Path) -> None:
    """Long format: one line per (objective, variant, mode, split)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            for (mode, split), scores in sorted(r.scores.items()):
                mean, std = _mean_std([s.accuracy for s in scores])
                interval = pooled_interval(scores)
                errors = sum(s.errors for s in scores) if interval else ""
                n = sum(s.n for s in scores) if interval else ""
                w.writerow([r.objective, r.variant, mode, split, len(scores), f"{mean:.6g}", f"{std:.6g}", errors, n,
                            *(f"{v:.6g}" for v in interval or ()), *([""] * 2 if interval is None else []),
                            f"{_mean_std(r.pretrain_time_s)[0]:.6g}", f"{_mean_std(r.pretrain_images_per_s)[0]:.6g}"])


def bar_figure(rows: list[Row], title: str):
    from vitssl.eval.plots import grouped_bars_figure

    splits = splits_of(rows)
    split = "test_large" if "test_large" in splits else splits[0]
    series = {}
    for mode in MODES:
        stats = [_mean_std([100 * v for v in r.accuracy(mode, split)]) for r in rows]
        series[mode] = ([m for m, _ in stats], [s for _, s in stats])
    lows = [v for m, _ in series.values() for v in m if v == v]
    low = max(0.0, min(lows) - 5) if lows else 0.0
    return grouped_bars_figure([label(r) for r in rows], series, f"{split} accuracy (%)", title, (low, 100.5))


def write_outputs(rows: list[Row], out: Path, title: str, reference: dict[str, float] | None = None) -> dict[str, Path]:
    from vitssl.tracking.plots import close

    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "csv": out / "comparison.csv", "png": out / "comparison.png"}
    tmp = {k: p.with_name(".tmp-" + p.name) for k, p in paths.items()}  # complete files or none
    tmp["md"].write_text(f"# {title}\n\n" + to_markdown(rows, reference))
    write_csv(rows, tmp["csv"])
    fig = bar_figure(rows, title)
    fig.savefig(tmp["png"], format="png", dpi=100, bbox_inches="tight")
    close(fig)
    for k, p in paths.items():
        tmp[k].replace(p)
    return paths


def compare(experiment: str, tracking_uri: str | None = None, out: str | Path | None = None,
            parent_run: str | None = None, reference: dict[str, float] | None = None) -> str:
    """Build the table, write comparison.{md,csv,png} under `out` when given; return the markdown."""
    rows = collect(experiment, tracking_uri, parent_run)
    if not rows:
        raise ValueError(f"experiment {experiment!r} has no finished fine-tune runs"
                         + (f" under study run {parent_run}" if parent_run else ""))
    if out is not None:
        write_outputs(rows, Path(out), f"{experiment}: accuracy by objective and mode", reference)
    return to_markdown(rows, reference)
