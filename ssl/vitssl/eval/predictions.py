"""Per-image predictions of an evaluation, one CSV for all its splits, in manifest order.

Every evaluation (fine-tune, linear probe, kNN, pixel baseline) logs it as the MLflow artifact
`eval/predictions.csv`, so two classifiers can be compared image by image (a paired test) and not
only by their accuracies. Rows: split, index (position in the split's manifest order), label,
prediction.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

ARTIFACT = "eval/predictions.csv"
FIELDS = ["split", "index", "label", "prediction"]


@dataclass
class SplitOutcome:
    labels: np.ndarray  # (N,) in manifest order
    predictions: np.ndarray  # (N,)

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predictions


def to_csv(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """split -> (labels, predictions), both in manifest order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for split, (labels, predictions) in splits.items():
        labels, predictions = np.asarray(labels), np.asarray(predictions)
        if labels.shape != predictions.shape:
            raise ValueError(f"split {split}: {len(labels)} labels but {len(predictions)} predictions")
        for i, (y, p) in enumerate(zip(labels.tolist(), predictions.tolist(), strict=True)):
            w.writerow([split, i, int(y), int(p)])
    return buf.getvalue()


def from_csv(text: str) -> dict[str, SplitOutcome]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and set(rows[0]) != set(FIELDS):
        raise ValueError(f"a predictions file has the columns {FIELDS}, this one {sorted(rows[0])}")
    out: dict[str, tuple[list[int], list[int]]] = {}
    for r in rows:
        labels, predictions = out.setdefault(r["split"], ([], []))
        if int(r["index"]) != len(labels):
            raise ValueError(f"split {r['split']}: rows out of manifest order at index {r['index']}")
        labels.append(int(r["label"]))
        predictions.append(int(r["prediction"]))
    return {s: SplitOutcome(np.array(y), np.array(p)) for s, (y, p) in out.items()}
