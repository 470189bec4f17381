"""Paired tests of the comparison: each encoder against scratch (the same ViT never pretrained, same
mode) and against the best pixel baseline (chosen on `val`), by the exact McNemar test on the same
images, seed by seed and with the discordant images summed over seeds."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitssl.eval.statistics import Discordant, discordant, mean_std
from vitssl.eval.study_runs import MODES, SCRATCH, Row, Score

CHOICE_SPLIT = "val"  # where the best pixel baseline is chosen


@dataclass
class PairedTest:
    row: Row
    mode: str
    split: str
    reference: Row
    per_seed: dict[str, Discordant] = field(default_factory=dict)  # seed of `row` -> its discordant images

    @property
    def pooled(self) -> Discordant:
        return sum(self.per_seed.values(), Discordant())


def best_baseline(rows: list[Row]) -> Row | None:
    """The pixel baseline with the highest `val` accuracy (the first of equals); None without one or
    without `val` scores: a test split never chooses it."""
    scored = [(mean_std(r.accuracy("finetune", CHOICE_SPLIT))[0], i, r) for i, r in enumerate(rows)
              if r.stage == "baseline" and r.accuracy("finetune", CHOICE_SPLIT)]
    return max(scored, key=lambda t: (t[0], -t[1]))[2] if scored else None


def scratch_row(rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.objective == SCRATCH and not r.variant and r.stage != "baseline"), None)


def _pair(a: Score, b: Score, what: str) -> Discordant | None:
    if a.outcome is None or b.outcome is None:
        return None
    if not np.array_equal(a.outcome.labels, b.outcome.labels):
        raise ValueError(f"{what}: the two runs ({a.run_id}, {b.run_id}) were evaluated on different images "
                         "(their labels differ); compare runs made on the same shards")
    return discordant(a.outcome.correct, b.outcome.correct)


def paired_test(row: Row, mode: str, split: str, reference: Row, reference_mode: str) -> PairedTest | None:
    """Seed s of `row` against seed s of `reference`, or against its only run (a pixel baseline is
    deterministic); None when no seed has per-image predictions on both sides."""
    ref_scores = reference.scores.get((reference_mode, split), [])
    by_seed = {s.seed: s for s in ref_scores}
    test = PairedTest(row, mode, split, reference)
    for a in row.scores.get((mode, split), []):
        b = by_seed.get(a.seed, ref_scores[0] if len(ref_scores) == 1 else None)
        pair = None if b is None else _pair(a, b, f"{row.objective} {mode} on {split} against {reference.objective}")
        if pair is not None:
            test.per_seed[a.seed] = pair
    return test if test.per_seed else None


def paired_tests(rows: list[Row], split: str) -> list[tuple[Row, str, PairedTest | None, PairedTest | None]]:
    """(row, mode, against scratch, against the best pixel baseline) for every encoder row and mode
    evaluated on `split`."""
    scratch, pixels = scratch_row(rows), best_baseline(rows)
    out = []
    for r in rows:
        if r.stage == "baseline":
            continue
        for mode in MODES:
            if (mode, split) not in r.scores:
                continue
            vs_scratch = paired_test(r, mode, split, scratch, mode) if scratch and r is not scratch else None
            vs_pixels = paired_test(r, mode, split, pixels, "finetune") if pixels else None
            out.append((r, mode, vs_scratch, vs_pixels))
    return out
