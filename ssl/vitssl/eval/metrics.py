"""Classification metrics of a test split: accuracy, per-class accuracy, confusion matrix, report."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import confusion_matrix


@dataclass
class ClassificationReport:
    accuracy: float
    per_class: dict[str, float]  # class name -> recall (the accuracy on that class's images)
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    class_names: list[str]
    text: str  # sklearn's classification report

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}errors": float(np.sum(self.confusion) -
                                                                             np.trace(self.confusion))}
        out |= {f"{prefix}accuracy_class_{name}": acc for name, acc in self.per_class.items()}
        return out

    def to_json(self) -> dict:
        return {"class_names": self.class_names, "confusion": self.confusion, "accuracy": self.accuracy,
                "per_class_accuracy": self.per_class}


def classification_report(y_true, y_pred, class_names: list[str]) -> ClassificationReport:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(1)
    per_class = {name: float(cm[i, i] / support[i]) if support[i] else float("nan")
                 for i, name in enumerate(class_names)}
    text = sk_report(y_true, y_pred, labels=labels, target_names=class_names, digits=4, zero_division=0)
    return ClassificationReport(float((y_true == y_pred).mean()), per_class, cm.tolist(), class_names, text)
