"""The comparison table of an experiment: objective x fine-tune / linear / kNN accuracy on each
evaluation split, with labelled 95% Wilson intervals, paired tests against scratch and the best
pixel baseline, and the seeds' numbers beside.

The parts: vitssl.eval.study_runs (the MLflow queries), .statistics and .paired (intervals, exact
McNemar), .tables (Markdown, CSV, figure), .reference (numbers from outside the project). Rows come
after the pixel baselines and scratch, in the `order` the caller gives: the entry points pass the
objective registry's, so eval itself never imports the objectives.
"""
from __future__ import annotations

from pathlib import Path

from vitssl.eval.study_runs import collect
from vitssl.eval.tables import to_markdown, write_outputs


def compare(experiment: str | list[str], tracking_uri: str | None = None, out: str | Path | None = None,
            parent_run: str | None = None, reference: dict[str, float] | None = None,
            order: list[str] | None = None) -> str:
    """Build the tables, write comparison{.md,.csv,_seeds.csv,_paired.csv,.png} under `out` when
    given; return the Markdown. `order`: the objectives' row order (others follow by name)."""
    rows = collect(experiment, tracking_uri, parent_run, order)
    if not rows:
        raise ValueError(f"experiment {experiment!r} has no finished fine-tune runs"
                         + (f" under study run {parent_run}" if parent_run else ""))
    if out is not None:
        names = experiment if isinstance(experiment, str) else " + ".join(experiment)
        write_outputs(rows, Path(out), f"{names}: accuracy by objective and mode", reference)
    return to_markdown(rows, reference)
