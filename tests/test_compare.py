"""launch/compare.py on MLflow stores filled by the test: latest run per (objective, mode, seed),
mean ± std over seeds, pretraining cost from the parent run, the same answer from an `mlflow server`."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import compare as compare_cli  # noqa: E402

from vitssl.eval.reference import SEEDS_FINETUNE  # noqa: E402
from vitssl.eval.study_runs import collect  # noqa: E402
from vitssl.eval.tables import to_markdown  # noqa: E402
from vitssl.objectives import OBJECTIVES  # noqa: E402

EXP = "study-test"


def fill(uri: str) -> None:
    """mae: 2 seeds (seed 0 fine-tuned twice: only the later counts), scratch: 1 seed, one failed run."""
    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXP)
    t = 1_700_000_000_000
    pre = {}
    for seed, seconds, ips in ((0, 40.0, [100.0, 200.0, 300.0]), (1, 60.0, [400.0])):
        run = c.create_run(exp, start_time=t, tags={"vitssl.stage": "pretrain", "vitssl.objective": "mae"})
        for step, v in enumerate(ips):
            c.log_metric(run.info.run_id, "images_per_s", v, step=step)
        c.set_terminated(run.info.run_id, "FINISHED", end_time=t + int(seconds * 1000))
        pre[seed] = run.info.run_id

    def finetune(objective, mode, seed, acc, start, status="FINISHED"):
        parent = pre[seed] if objective == "mae" else "none"
        tags = {"vitssl.stage": "finetune", "vitssl.objective": objective, "vitssl.mode": mode,
                "vitssl.seed": str(seed), "vitssl.pretrain_run_id": parent}
        if parent != "none":
            tags["mlflow.parentRunId"] = parent
        run = c.create_run(exp, start_time=start, tags=tags)
        c.log_metric(run.info.run_id, "test_accuracy", acc)
        c.set_terminated(run.info.run_id, status, end_time=start + 1000)

    finetune("mae", "finetune", 0, 0.50, t + 10_000)  # superseded by the later run of seed 0
    finetune("mae", "finetune", 0, 0.99, t + 20_000)
    finetune("mae", "finetune", 1, 0.97, t + 20_000)
    finetune("mae", "knn", 0, 0.90, t + 20_000)
    finetune("mae", "knn", 1, 0.90, t + 30_000)
    finetune("mae", "linear", 1, 0.10, t + 40_000, status="FAILED")  # ignored
    finetune("none", "finetune", 0, 0.95, t + 20_000)


def check_rows(uri: str) -> str:
    rows = collect(EXP, uri)
    assert [r.objective for r in rows] == ["none", "mae"]
    scratch, mae = rows
    assert sorted(mae.accuracy("finetune")) == [0.97, 0.99]
    assert ("linear", "test") not in mae.scores
    assert mae.seeds == {"0", "1"} and scratch.seeds == {"0"}
    assert sorted(mae.pretrain_time_s) == [40.0, 60.0]
    assert sorted(mae.pretrain_images_per_s) == [200.0, 400.0]  # median of each run's history
    assert scratch.pretrain_time_s == []
    table = to_markdown(rows, SEEDS_FINETUNE)
    assert "| mae | 2 | 98.00 ± 1.41 | – | 90.00 ± 0.00 | 50.0 ± 14.1 | 300 ± 141 | 99.00 |" in table, table
    assert "| none (scratch) | 1 | 95.00 | – | – | – | – | – |" in table, table
    return table


def test_compare_sqlite_store_and_cli_outputs(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill(uri)
    table = check_rows(uri)
    n_runs = len(mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name(EXP).experiment_id]))
    out = tmp_path / "cmp"
    assert compare_cli.main(["--experiment", EXP, "--tracking-uri", uri, "--out", str(out), "--seeds-reference"]) == 0
    assert capsys.readouterr().out == table
    assert table in (out / "comparison.md").read_text()
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    mae_ft = [r for r in rows if (r["objective"], r["mode"], r["split"]) == ("mae", "finetune", "test")]
    assert len(mae_ft) == 1 and float(mae_ft[0]["accuracy_mean"]) == pytest.approx(0.98)
    assert (out / "comparison.png").stat().st_size > 1000
    c = mlflow.MlflowClient(uri)
    assert len(c.search_runs([c.get_experiment_by_name(EXP).experiment_id])) == n_runs  # logs nothing


def test_compare_unknown_experiment_is_an_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert compare_cli.main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "error: no MLflow experiment 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_through_an_mlflow_server(tmp_path):
    from mlflow_server import mlflow_server

    with mlflow_server(tmp_path) as url:
        fill(url)
        check_rows(url)


# ---------------------------------------------------------------- splits, intervals, a study's children


def test_wilson_interval_matches_the_textbook_values():
    from vitssl.eval.statistics import wilson

    low, high = wilson(2, 100)  # 98 of 100: 0.9300 to 0.9945 (Wilson 1927; Newcombe 1998, table I)
    assert (round(low, 4), round(high, 4)) == (0.93, 0.9945)
    assert wilson(0, 600)[1] == 1.0  # clipped to a probability


def fill_study(uri: str) -> str:
    """A study run with children reporting val / test / test_large, a pixel baseline, and a run of
    another study that the parent filter must leave out. Returns the study run id."""
    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXP)
    study = c.create_run(exp, tags={"vitssl.stage": "study"}).info.run_id
    other = c.create_run(exp, tags={"vitssl.stage": "study"}).info.run_id

    def child(parent, stage, objective, mode, seed, errors):
        tags = {"vitssl.stage": stage, "vitssl.objective": objective, "vitssl.mode": mode, "vitssl.seed": str(seed),
                "mlflow.parentRunId": parent}
        run = c.create_run(exp, tags=tags).info.run_id
        for split, n in (("val", 300), ("test", 300), ("test_large", 600)):
            e = errors[split]
            c.log_metric(run, f"{split}_accuracy", 1 - e / n)
            c.log_metric(run, f"{split}_errors", e)
            c.log_metric(run, f"{split}_n", n)
        c.set_terminated(run, "FINISHED")

    child(study, "finetune", "mae", "finetune", 0, {"val": 3, "test": 2, "test_large": 6})
    child(study, "finetune", "mae", "finetune", 1, {"val": 5, "test": 4, "test_large": 10})
    child(study, "finetune", "none", "linear", 0, {"val": 30, "test": 36, "test_large": 90})
    child(study, "baseline", "pixels_svm_rbf", "classifier", 0, {"val": 7, "test": 3, "test_large": 6})
    child(other, "finetune", "mae", "finetune", 2, {"val": 0, "test": 0, "test_large": 0})
    return study


def test_split_tables_with_intervals_baselines_and_the_study_filter(tmp_path):
    from vitssl.eval.statistics import wilson

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = fill_study(uri)
    rows = collect(EXP, uri, parent_run=study, order=list(OBJECTIVES))
    assert [r.objective for r in rows] == ["pixels_svm_rbf", "none", "mae"]
    assert rows[2].seeds == {"0", "1"}  # the other study's seed 2 is left out
    table = to_markdown(rows, SEEDS_FINETUNE)
    sections = table.split("\n\n")
    titles = [part for part in sections if part.startswith("## ")]
    assert titles == ["## test (300 images)", "## test_large: images no stage ever saw (600 images)",
                      "## val: every choice was made on it (300 images)"]
    assert all("in brackets the 95% Wilson interval of the errors pooled over a row's seeds" in table.split(t)[1]
               for t in titles)  # every table says what its brackets are
    low, high = wilson(6 + 10, 1200)  # errors pooled over the two seeds
    assert f"| mae | 2 | 98.67 ± 0.47 [{100 * low:.1f}, {100 * high:.1f}] | – | – |" in table, table
    low, high = wilson(3, 300)
    assert f"| pixels: RBF SVM | 1 | 99.00 [{100 * low:.1f}, {100 * high:.1f}] | – | – | – | – | – |" in table, table
    low, high = wilson(2 + 4, 600)  # the test (300) table has intervals too, and the seeds' column
    assert f"| mae | 2 | 99.00 ± 0.47 [{100 * low:.1f}, {100 * high:.1f}] | – | – | – | – | 99.00 |" in table, table


def test_search_runs_reproduces_the_csv(tmp_path):
    """The README's one-liner: mlflow.search_runs over the study's children gives compare.py's numbers."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = fill_study(uri)
    out = tmp_path / "cmp"
    assert compare_cli.main(["--experiment", EXP, "--tracking-uri", uri, "--out", str(out),
                             "--parent-run", study]) == 0
    with open(out / "comparison.csv") as f:
        csv_rows = {(r["objective"], r["mode"], r["split"]): r for r in csv.DictReader(f)}
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[EXP], filter_string=f"tags.`mlflow.parentRunId` = '{study}'")
    df["mode"] = df["tags.vitssl.mode"].where(df["tags.vitssl.stage"] == "finetune", "finetune")
    by = df.groupby(["tags.vitssl.objective", "mode"])
    checked = 0
    for (objective, mode), group in by:
        for split in ("val", "test", "test_large"):
            row = csv_rows[(objective, mode, split)]
            assert float(row["accuracy_mean"]) == pytest.approx(group[f"metrics.{split}_accuracy"].mean(), abs=1e-6)
            assert float(row["errors_pooled"]) == group[f"metrics.{split}_errors"].sum()
            checked += 1
    assert checked == len(csv_rows) == 9


# ---------------------------------------------------------------- paired tests on per-image predictions


def test_exact_mcnemar_is_the_binomial_test_on_discordant_images():
    from scipy.stats import binomtest

    from vitssl.eval.statistics import discordant, mcnemar_exact

    # 9 images only a gets right, 1 only b: two-sided p = 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(20, 5) == pytest.approx(binomtest(20, 25, 0.5).pvalue)
    d = discordant([1, 1, 0, 0, 1], [0, 1, 1, 0, 0])  # images both get right or both wrong do not count
    assert (d.a_only, d.b_only) == (2, 1)
    with pytest.raises(ValueError, match="same images"):
        discordant([1, 0], [1, 0, 1])


def test_predictions_csv_round_trip_and_order_check():
    import numpy as np

    from vitssl.eval.predictions import from_csv, to_csv

    text = to_csv({"val": (np.array([0, 1, 2]), np.array([0, 2, 2])), "test": (np.array([1]), np.array([1]))})
    back = from_csv(text)
    assert back["val"].correct.tolist() == [True, False, True] and back["test"].labels.tolist() == [1]
    with pytest.raises(ValueError, match="out of manifest order"):
        from_csv(text.replace("val,1,", "val,7,"))


N = 20


def correct_except(wrong: list[int]) -> list[int]:
    """Predictions of N images labelled 0..2 in turn, wrong exactly on the given positions."""
    return [(i % 3 + (1 if i in wrong else 0)) % 3 for i in range(N)]


def fill_paired(uri: str) -> None:
    """scratch and MAE fine-tunes, 2 seeds, and two pixel baselines, with per-image predictions on
    val and test. The logistic regression is better on val, the SVM on test."""
    from vitssl.eval.predictions import ARTIFACT, to_csv

    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXP)
    labels = [i % 3 for i in range(N)]

    def run(stage, objective, seed, wrong: dict[str, list[int]]):
        tags = {"vitssl.stage": stage, "vitssl.objective": objective, "vitssl.seed": str(seed),
                "vitssl.mode": "finetune" if stage == "finetune" else "classifier"}
        run_id = c.create_run(exp, tags=tags).info.run_id
        for split, w in wrong.items():
            c.log_metric(run_id, f"{split}_accuracy", 1 - len(w) / N)
            c.log_metric(run_id, f"{split}_errors", len(w))
            c.log_metric(run_id, f"{split}_n", N)
        c.log_text(run_id, to_csv({s: (labels, correct_except(w)) for s, w in wrong.items()}), ARTIFACT)
        c.set_terminated(run_id, "FINISHED")

    run("finetune", "none", 0, {"val": [0], "test": [0, 1, 2, 3, 4, 5]})
    run("finetune", "mae", 0, {"val": [], "test": [5, 6]})  # test: 5 only MAE right, 1 only scratch right
    run("finetune", "none", 1, {"val": [0], "test": [0, 1, 2, 3]})
    run("finetune", "mae", 1, {"val": [], "test": []})  # 4 only MAE right
    run("baseline", "pixels_logreg", 0, {"val": [], "test": [7, 8, 9]})
    run("baseline", "pixels_svm_rbf", 0, {"val": [1], "test": []})


def test_paired_tests_pair_seeds_pool_them_and_choose_the_pixel_baseline_on_val(tmp_path):
    from vitssl.eval.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_paired(uri)
    out = tmp_path / "cmp"
    table = compare(EXP, uri, out)
    # seed 0: 5 / 1 (p = 2 * 7 / 64), seed 1: 4 / 0 (p = 2 / 16), pooled 9 / 1 (p = 2 * 11 / 1024); against
    # the logistic regression (best on val, though the SVM is better on test): seed 0 3 / 2, seed 1 3 / 0
    expected = "| mae | finetune | 9 / 1 | **0.021** | s0 0.22, s1 0.12 | 6 / 2 | 0.29 | s0 1, s1 0.25 |"
    assert expected in table, table
    assert "vs pixels: logistic regression: this / it only" in table
    # scratch against it: seed 0 3 / 6, seed 1 3 / 4, pooled 6 / 10: p = 2 * sum(C(16, k), k <= 6) / 2^16
    assert "| none (scratch) | finetune | – | – | – | 6 / 10 | 0.45 | s0 0.51, s1 1 |" in table, table
    with open(out / "comparison_paired.csv") as f:
        pooled = [r for r in csv.DictReader(f) if (r["objective"], r["split"], r["reference"], r["seed"])
                  == ("mae", "test", "none", "pooled")]
    assert len(pooled) == 1 and (pooled[0]["this_only"], pooled[0]["reference_only"]) == ("9", "1")
    assert float(pooled[0]["mcnemar_exact_p"]) == pytest.approx(22 / 1024, rel=1e-5)
    with open(out / "comparison_seeds.csv") as f:
        seeds = {(r["objective"], r["split"], r["seed"]): r for r in csv.DictReader(f)}
    assert float(seeds[("none", "test", "0")]["accuracy"]) == pytest.approx(14 / 20)
    assert float(seeds[("none", "test", "1")]["errors"]) == 4 and len(seeds) == 2 * 2 * 2 + 2 * 2


def test_paired_test_refuses_runs_on_other_images(tmp_path):
    from vitssl.eval.paired import paired_test
    from vitssl.eval.predictions import SplitOutcome
    from vitssl.eval.study_runs import Row, Score

    a = Row("mae", scores={("finetune", "test"): [Score(1.0, 0, 2, "0", "a", SplitOutcome([0, 1], [0, 1]))]})
    b = Row("none", scores={("finetune", "test"): [Score(1.0, 0, 2, "0", "b", SplitOutcome([1, 0], [1, 0]))]})
    with pytest.raises(ValueError, match="different images"):
        paired_test(a, "finetune", "test", b, "finetune")


def test_rows_follow_the_order_the_caller_gives(tmp_path):
    """The entry points pass the objective registry's order; eval itself imports no objective."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXP)
    for objective in ("infonce", "mae"):
        run = c.create_run(exp, tags={"vitssl.stage": "finetune", "vitssl.objective": objective,
                                      "vitssl.mode": "finetune", "vitssl.seed": "0"}).info.run_id
        c.log_metric(run, "test_accuracy", 0.9)
        c.log_metric(run, "test_errors", 30)
        c.log_metric(run, "test_n", 300)
        c.set_terminated(run, "FINISHED")
    assert [r.objective for r in collect(EXP, uri, order=["mae", "infonce"])] == ["mae", "infonce"]
    assert [r.objective for r in collect(EXP, uri, order=["infonce", "mae"])] == ["infonce", "mae"]
    assert "vitssl.objectives" not in (ROOT / "ssl/vitssl/eval/compare.py").read_text()


def test_several_experiments_take_the_latest_run_of_each_key(tmp_path, capsys):
    """A sweep's fine-tunes (another experiment, run later) replace the study's in the table."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_paired(uri)
    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("sweep")
    run = c.create_run(exp, tags={"vitssl.stage": "finetune", "vitssl.objective": "mae", "vitssl.mode": "finetune",
                                  "vitssl.seed": "0"}).info.run_id
    c.log_metric(run, "val_accuracy", 0.5)
    c.set_terminated(run, "FINISHED")
    rows = {r.objective: r for r in collect([EXP, "sweep"], uri)}
    assert sorted(rows["mae"].accuracy("finetune", "val")) == [0.5, 1.0] and len(rows["none"].seeds) == 2
    assert compare_cli.main(["--experiment", EXP, "sweep", "--tracking-uri", uri]) == 0
    assert "| mae | 2 | 75.00 ± 35.36 |" in capsys.readouterr().out
    assert compare_cli.main(["--experiment", EXP, "nope", "--tracking-uri", uri]) == 2
