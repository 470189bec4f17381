"""Classical classifiers on raw pixels, trained on the same labeled images as the encoders.

The bar a self-supervised encoder has to clear: if an RBF SVM on pixels beats it, the encoder has
not learned anything a kernel on pixels does not already see. Hyperparameters are chosen on the
validation split only; the test splits are scored once with the chosen ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid
from sklearn.svm import SVC

BASELINES = {
    "pixels_logreg": (lambda **p: LogisticRegression(max_iter=2000, **p), {"C": [0.01, 0.1, 1.0, 10.0]}),
    "pixels_svm_rbf": (lambda **p: SVC(kernel="rbf", **p), {"C": [1.0, 3.0, 10.0, 30.0],
                                                            "gamma": ["scale", 0.01, 0.03]}),
}


@dataclass
class BaselineResult:
    name: str
    params: dict
    metrics: dict[str, float]  # <split>_accuracy, <split>_errors, <split>_n for val and each test split
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, predictions), manifest order


def _flat(images) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1)  # pixels in [0, 1]


def split_metrics(split: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    errors = int((np.asarray(y_true) != np.asarray(y_pred)).sum())
    return {f"{split}_accuracy": 1 - errors / len(y_true), f"{split}_errors": float(errors),
            f"{split}_n": float(len(y_true))}


def fit_baseline(name: str, data: dict[str, tuple[np.ndarray, np.ndarray]], val: str = "val",
                 train: str = "train") -> BaselineResult:
    """`data`: split -> (images, labels). Fit each grid point on `train`, keep the best on `val`
    (the first of equals: grids go from simple to complex), score every other split once."""
    make, grid = BASELINES[name]
    x_train, y_train = _flat(data[train][0]), np.asarray(data[train][1])
    x_val, y_val = _flat(data[val][0]), np.asarray(data[val][1])
    best, best_acc = None, -1.0
    for params in ParameterGrid(grid):
        model = make(**params).fit(x_train, y_train)
        acc = float((model.predict(x_val) == y_val).mean())
        if acc > best_acc:
            best, best_acc = (params, model), acc
    params, model = best
    metrics: dict[str, float] = {}
    predictions = {}
    for split, (images, labels) in data.items():
        if split != train:
            predictions[split] = (np.asarray(labels), model.predict(_flat(images)))
            metrics |= split_metrics(split, *predictions[split])
    return BaselineResult(name, params, metrics, predictions)
