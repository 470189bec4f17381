"""The evaluation report of a classifier or frozen encoder, the same for every fine-tune mode:
metrics per split, confusion matrix (PNG + JSON), classification report, PCA / t-SNE, curves."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitssl.eval.metrics import classification_report
from vitssl.eval.plots import confusion_figure, curves_figure, embedding_figure, project
from vitssl.eval.predictions import ARTIFACT as PREDICTIONS
from vitssl.eval.predictions import to_csv as predictions_csv
from vitssl.tracking import MlflowRun
from vitssl.tracking.plots import close


@dataclass
class SplitPredictions:
    split: str
    predictions: torch.Tensor  # (N,) class indices
    labels: torch.Tensor  # (N,)
    features: torch.Tensor  # (N, D) pooled embeddings, for the embedding plots


def report(tracker: MlflowRun, out_dir: Path, mode: str, class_names: list[str], splits: list[SplitPredictions],
           curves: dict, xlabel: str, extra: dict[str, float], tsne: bool, seed: int) -> dict[str, float]:
    """Log metrics `<split>_accuracy`, `<split>_errors`, `<split>_n`, per-class accuracy and the
    per-image predictions (eval/predictions.csv, for paired tests) of every split; figures and files
    for the first. Returns the metrics (also written to out_dir/eval_metrics.json)."""
    metrics: dict[str, float] = {k: v for k, v in extra.items() if v}
    first = None
    for s in splits:
        rep = classification_report(s.labels.numpy(), s.predictions.numpy(), class_names)
        metrics |= rep.metrics(f"{s.split}_") | {f"{s.split}_n": float(len(s.labels))}
        print(f"{mode}: {s.split} accuracy {rep.accuracy:.4f} ({int(metrics[f'{s.split}_errors'])} errors of "
              f"{len(s.labels)})")
        first = first or (s, rep)
    tracker.log_metrics(metrics, 0)
    predictions = predictions_csv({s.split: (s.labels.numpy(), s.predictions.numpy()) for s in splits})
    tracker.log_text(predictions, PREDICTIONS)
    s, rep = first
    title = f"{mode}: {s.split} accuracy {rep.accuracy:.2%}"
    tracker.log_text(json.dumps(rep.to_json() | {"split": s.split}, indent=2), "eval/confusion_matrix.json")
    tracker.log_text(rep.text, "eval/classification_report.txt")
    figures = {"eval/confusion_matrix.png": confusion_figure(rep.confusion, class_names, title)}
    y = s.labels.numpy()
    for method in ("pca", "tsne") if tsne else ("pca",):
        points = project(s.features.numpy().astype(np.float64), method, seed=seed)
        figures[f"eval/embeddings_{method}.png"] = embedding_figure(
            points, y, class_names, f"{method.upper()} of {s.split} embeddings ({mode})")
    if curves:
        figures["eval/curves.png"] = curves_figure(curves, xlabel, f"{mode} training")
    for path, fig in figures.items():
        tracker.log_figure(fig, path)
        close(fig)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.csv").write_text(predictions)
    (out_dir / "eval_metrics.json").write_text(json.dumps(metrics | {"confusion": rep.confusion}, indent=2))
    print(rep.text)
    return metrics
