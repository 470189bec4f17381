"""The comparison rendered: one Markdown table per evaluation split with labelled intervals, the
paired tests under it, and the CSV files (per objective and mode, per seed, per paired test) and a
bar figure."""
from __future__ import annotations

import csv
from pathlib import Path

from vitssl.eval.paired import PairedTest, best_baseline, paired_tests
from vitssl.eval.statistics import INTERVAL_LABEL, mean_std, wilson
from vitssl.eval.study_runs import MODES, SPLITS, Row, Score

SPLIT_TITLES = {"test": "test", "test_large": "test_large: images no stage ever saw",
                "val": "val: every choice was made on it"}
LABELS = {"none": "none (scratch)", "pixels_logreg": "pixels: logistic regression",
          "pixels_svm_rbf": "pixels: RBF SVM"}
HEADER = ["objective", "seeds", "finetune acc (%)", "linear acc (%)", "kNN acc (%)", "pretrain time (s)",
          "pretrain images/s"]
SIGNIFICANT = 0.05


def pooled_interval(scores: list[Score]) -> tuple[float, float] | None:
    """The Wilson interval of the errors summed over seeds (None when a run did not report them)."""
    if not scores or any(s.errors is None or not s.n for s in scores):
        return None
    return wilson(sum(s.errors for s in scores), sum(s.n for s in scores))


def label(row: Row) -> str:
    name = LABELS.get(row.objective, row.objective)
    return f"{name} [{row.variant}]" if row.variant else name


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _fmt_scores(scores: list[Score]) -> str:
    text = _fmt([s.accuracy for s in scores], 100)
    interval = pooled_interval(scores)
    return text if interval is None else f"{text} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def splits_of(rows: list[Row]) -> list[str]:
    present = {split for r in rows for _, split in r.scores}
    return [s for s in SPLITS if s in present]


def _title(rows: list[Row], split: str) -> str:
    ns = {s.n for r in rows for (_, sp), scores in r.scores.items() if sp == split for s in scores if s.n}
    size = f" ({int(ns.pop()):,} images)" if len(ns) == 1 else ""
    return SPLIT_TITLES.get(split, split) + size


def accuracy_caption(rows: list[Row], split: str) -> str:
    seeds = {len(scores) for r in rows for (_, sp), scores in r.scores.items() if sp == split}
    spread = "mean ± std over seeds (sample std), " if max(seeds) > 1 else ""
    return (f"Accuracy %, {spread}in brackets the {INTERVAL_LABEL} of the errors "
            + ("pooled over a row's seeds (each seed's predictions counted as independent draws, so it is "
               "narrower than one seed's interval)." if max(seeds) > 1 else "of the one run."))


def _p(p: float) -> str:
    return f"**{p:.2g}**" if p < SIGNIFICANT else f"{p:.2g}"


def _paired_cells(test: PairedTest | None) -> list[str]:
    if test is None:
        return ["–", "–", "–"]
    pooled = test.pooled
    per_seed = ", ".join(f"s{seed} {_p(d.p_value)}" for seed, d in test.per_seed.items())
    return [f"{pooled.a_only} / {pooled.b_only}", _p(pooled.p_value), per_seed]


def paired_markdown(rows: list[Row], split: str) -> str:
    tests = paired_tests(rows, split)
    if not any(s or p for _, _, s, p in tests):
        return ""
    pixels = best_baseline(rows)
    pixel_name = label(pixels) if pixels else "pixels"
    header = ["objective", "mode", "vs scratch: this / scratch only", "p", "p per seed",
              f"vs {pixel_name}: this / it only", "p", "p per seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, mode, vs_scratch, vs_pixels in tests:
        lines.append("| " + " | ".join([label(row), mode, *_paired_cells(vs_scratch), *_paired_cells(vs_pixels)])
                     + " |")
    caption = (f"Paired tests on {split}, exact McNemar (two-sided binomial test on the images exactly one of "
               "the two classifiers gets right): `a / b` counts the images only this row gets right and only the "
               "reference gets right, summed over seeds; p pooled over seeds, then per seed (seed s against "
               f"scratch's seed s, or against the pixel baseline's one run); bold: p < {SIGNIFICANT}. Scratch: the same ViT without pretraining, same mode "
               f"(linear and kNN: its random encoder). {pixel_name}: the pixel baseline with the best `val` accuracy.")
    return "\n".join(lines) + "\n\n" + caption + "\n"


def to_markdown(rows: list[Row], reference: dict[str, float] | None = None) -> str:
    """One table per evaluation split, each with its caption (what the brackets are) and its paired
    tests; `reference` (objective -> fine-tune test accuracy %, e.g. the seeds' SEEDS_FINETUNE on
    their protocol) adds a column to the test table."""
    parts = []
    for split in splits_of(rows):
        with_reference = reference is not None and split == "test"
        header = HEADER + (["seeds' fine-tune (%, one run)"] if with_reference else [])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            if not any(sp == split for _, sp in r.scores):
                continue
            cells = [label(r), str(len(r.seeds))]
            cells += [_fmt_scores(r.scores.get((m, split), [])) for m in MODES]
            cells += [_fmt(r.pretrain_time_s, digits=1), _fmt(r.pretrain_images_per_s, digits=0)]
            if with_reference:
                cells.append(f"{reference[r.objective]:.2f}" if r.objective in reference and not r.variant else "–")
            lines.append("| " + " | ".join(cells) + " |")
        section = f"## {_title(rows, split)}\n\n" + "\n".join(lines) + "\n\n" + accuracy_caption(rows, split) + "\n"
        paired = paired_markdown(rows, split)
        parts.append(section + ("\n" + paired if paired else ""))
    return "\n".join(parts)


CSV_FIELDS = ["objective", "variant", "mode", "split", "seeds", "accuracy_mean", "accuracy_std", "errors_pooled",
              "n_pooled", "pooled_wilson95_low", "pooled_wilson95_high", "pretrain_time_s_mean",
              "pretrain_images_per_s_mean"]
SEED_FIELDS = ["objective", "variant", "mode", "split", "seed", "accuracy", "errors", "n", "wilson95_low",
               "wilson95_high", "run_id"]
PAIRED_FIELDS = ["objective", "variant", "mode", "split", "reference", "seed", "this_only", "reference_only",
                 "mcnemar_exact_p"]


def _g(v) -> str:
    return "" if v is None or v == "" else f"{v:.6g}"


def write_csv(rows: list[Row], path: Path) -> None:
    """Long format: one line per (objective, variant, mode, split); the interval pools the seeds' errors."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            for (mode, split), scores in sorted(r.scores.items()):
                mean, std = mean_std([s.accuracy for s in scores])
                interval = pooled_interval(scores)
                errors = sum(s.errors for s in scores) if interval else None
                n = sum(s.n for s in scores) if interval else None
                w.writerow([r.objective, r.variant, mode, split, len(scores), _g(mean), _g(std), _g(errors), _g(n),
                            *(_g(v) for v in interval or (None, None)),
                            _g(mean_std(r.pretrain_time_s)[0]), _g(mean_std(r.pretrain_images_per_s)[0])])


def write_seeds_csv(rows: list[Row], path: Path) -> None:
    """One line per run: each seed's accuracy and its own 95% Wilson interval."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SEED_FIELDS)
        for r in rows:
            for (mode, split), scores in sorted(r.scores.items()):
                for s in scores:
                    interval = wilson(s.errors, s.n) if s.errors is not None and s.n else (None, None)
                    w.writerow([r.objective, r.variant, mode, split, s.seed, _g(s.accuracy), _g(s.errors), _g(s.n),
                                *(_g(v) for v in interval), s.run_id])


def write_paired_csv(rows: list[Row], path: Path) -> None:
    """One line per paired test and seed, and one with seed `pooled` for the sum over seeds."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PAIRED_FIELDS)
        for split in splits_of(rows):
            for row, mode, *tests in paired_tests(rows, split):
                for test in tests:
                    if test is None:
                        continue
                    for seed, d in [*test.per_seed.items(), ("pooled", test.pooled)]:
                        w.writerow([row.objective, row.variant, mode, split, test.reference.objective, seed,
                                    d.a_only, d.b_only, _g(d.p_value)])


def bar_figure(rows: list[Row], title: str):
    from vitssl.eval.plots import grouped_bars_figure

    splits = splits_of(rows)
    split = "test_large" if "test_large" in splits else splits[0]
    series = {}
    for mode in MODES:
        stats = [mean_std([100 * v for v in r.accuracy(mode, split)]) for r in rows]
        series[mode] = ([m for m, _ in stats], [s for _, s in stats])
    lows = [v for m, _ in series.values() for v in m if v == v]
    low = max(0.0, min(lows) - 5) if lows else 0.0
    return grouped_bars_figure([label(r) for r in rows], series, f"{split} accuracy (%), mean ± std over seeds",
                               title, (low, 100.5))


OUTPUTS = {"md": "comparison.md", "csv": "comparison.csv", "seeds": "comparison_seeds.csv",
           "paired": "comparison_paired.csv", "png": "comparison.png"}


def write_outputs(rows: list[Row], out: Path, title: str, reference: dict[str, float] | None = None) -> dict[str, Path]:
    from vitssl.tracking.plots import close

    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in OUTPUTS.items()}
    tmp = {k: p.with_name(".tmp-" + p.name) for k, p in paths.items()}  # complete files or none
    tmp["md"].write_text(f"# {title}\n\n" + to_markdown(rows, reference))
    write_csv(rows, tmp["csv"])
    write_seeds_csv(rows, tmp["seeds"])
    write_paired_csv(rows, tmp["paired"])
    fig = bar_figure(rows, title)
    fig.savefig(tmp["png"], format="png", dpi=100, bbox_inches="tight")
    close(fig)
    for k, p in paths.items():
        tmp[k].replace(p)
    return paths
