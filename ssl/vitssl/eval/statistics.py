"""The study's statistics: Wilson intervals of accuracies, mean ± std over seeds, and the exact
McNemar test of two classifiers on the same images."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

INTERVAL_LABEL = "95% Wilson interval"


def wilson(errors: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy with `errors` wrong out of `n`."""
    p = 1 - errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value, nan for none)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Discordant:
    """Images one classifier (a) gets right and the other (b) wrong, and the reverse."""
    a_only: int = 0
    b_only: int = 0

    def __add__(self, other: Discordant) -> Discordant:
        return Discordant(self.a_only + other.a_only, self.b_only + other.b_only)

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.a_only, self.b_only)


def discordant(a_correct: np.ndarray, b_correct: np.ndarray) -> Discordant:
    """Discordant pairs of two classifiers' per-image correctness on the same images, same order."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs the same images: {a.shape[0]} against {b.shape[0]} predictions")
    return Discordant(int((a & ~b).sum()), int((~a & b).sum()))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact McNemar test: two-sided binomial test of a_only successes in a_only + b_only trials at
    p = 1/2 (the images both get right, or both wrong, say nothing about which is better)."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)
