"""The comparison table of an experiment: objective x fine-tune / linear / kNN accuracy x pretrain cost.

Reads MLflow only (search_runs over tags), so it works the same on a SQLite store and an
`mlflow server`. For each (objective, variant, mode, seed) the latest finished fine-tune run counts;
several seeds give mean ± std (sample std, n - 1). The `variant` tag (launch/sweep.py, or run.tags in a
config) tells apart runs of one objective with other settings; within an objective, variants are
ranked by fine-tune accuracy, then linear, then kNN.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("finetune", "linear", "knn")
ORDER = ("none", "distill", "mae", "infonce", "mae_infonce", "video_mae", "cnn_autoencoder", "rotation", "simclr")


@dataclass
class Row:
    objective: str
    variant: str = ""
    accuracy: dict[str, list[float]] = field(default_factory=dict)  # mode -> one value per seed
    seeds: set[str] = field(default_factory=set)
    pretrain_time_s: list[float] = field(default_factory=list)
    pretrain_images_per_s: list[float] = field(default_factory=list)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    mean, std = _mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


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


def collect(experiment: str, tracking_uri: str | None = None) -> list[Row]:
    import mlflow

    from vitssl.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.`vitssl.stage` = 'finetune' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    latest: dict[tuple[str, str, str, str], object] = {}
    for run in runs:  # newest first: the first seen of each key is the latest
        t = run.data.tags
        if "test_accuracy" not in run.data.metrics:
            continue
        key = (t.get("vitssl.objective", "none"), t.get("variant", ""), t.get("vitssl.mode", "?"), t.get("vitssl.seed", "0"))
        latest.setdefault(key, run)
    rows: dict[tuple[str, str], Row] = {}
    pretrain_seen: set[str] = set()
    for (objective, variant, mode, seed), run in latest.items():
        row = rows.setdefault((objective, variant), Row(objective, variant))
        row.accuracy.setdefault(mode, []).append(run.data.metrics["test_accuracy"])
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
        return [-_mean_std(r.accuracy[m])[0] if m in r.accuracy else 0.0 for m in MODES]

    return sorted(rows.values(), key=lambda r: (rank.get(r.objective, len(ORDER)), r.objective, score(r)))


def label(row: Row) -> str:
    name = row.objective if row.objective != "none" else "none (scratch)"
    return f"{name} [{row.variant}]" if row.variant else name


HEADER = ["objective", "seeds", "finetune acc (%)", "linear acc (%)", "kNN acc (%)", "pretrain time (s)",
          "pretrain images/s"]


def to_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = [label(r), str(len(r.seeds))]
        cells += [_fmt(r.accuracy.get(m, []), 100) for m in MODES]
        cells += [_fmt(r.pretrain_time_s, digits=1), _fmt(r.pretrain_images_per_s, digits=0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objective", "seeds"] + [f"{m}_{s}" for m in (*MODES, "pretrain_time_s", "pretrain_images_per_s")
                                             for s in ("mean", "std", "n")])
        for r in rows:
            cells: list = [label(r), len(r.seeds)]
            for values in [r.accuracy.get(m, []) for m in MODES] + [r.pretrain_time_s, r.pretrain_images_per_s]:
                mean, std = _mean_std(values)
                cells += [f"{mean:.6g}", f"{std:.6g}", len(values)]
            w.writerow(cells)


def bar_figure(rows: list[Row], title: str):
    from vitssl.eval.plots import grouped_bars_figure

    series = {}
    for mode in MODES:
        stats = [_mean_std([100 * v for v in r.accuracy.get(mode, [])]) for r in rows]
        series[mode] = ([m for m, _ in stats], [s for _, s in stats])
    lows = [v for m, _ in series.values() for v in m if v == v]
    low = max(0.0, min(lows) - 5) if lows else 0.0
    return grouped_bars_figure([label(r) for r in rows], series, "test accuracy (%)", title, (low, 100.5))


def write_outputs(rows: list[Row], out: Path, title: str) -> dict[str, Path]:
    from vitssl.tracking.plots import close

    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "csv": out / "comparison.csv", "png": out / "comparison.png"}
    paths["md"].write_text(f"# {title}\n\n" + to_markdown(rows))
    write_csv(rows, paths["csv"])
    fig = bar_figure(rows, title)
    fig.savefig(paths["png"], dpi=100, bbox_inches="tight")
    close(fig)
    return paths


def compare(experiment: str, tracking_uri: str | None = None, out: str | Path | None = None) -> str:
    """Build the table, write comparison.{md,csv,png} under `out` when given; return the markdown."""
    rows = collect(experiment, tracking_uri)
    if not rows:
        raise ValueError(f"experiment {experiment!r} has no finished fine-tune runs")
    if out is not None:
        write_outputs(rows, Path(out), f"{experiment}: test accuracy by objective and mode")
    return to_markdown(rows)
