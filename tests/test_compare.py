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

from vitssl.eval.compare import SEEDS_FINETUNE, collect, to_markdown  # noqa: E402

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
    from vitssl.eval.compare import wilson

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
    from vitssl.eval.compare import wilson

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = fill_study(uri)
    rows = collect(EXP, uri, parent_run=study)
    assert [r.objective for r in rows] == ["pixels_svm_rbf", "none", "mae"]
    assert rows[2].seeds == {"0", "1"}  # the other study's seed 2 is left out
    table = to_markdown(rows, SEEDS_FINETUNE)
    sections = table.split("\n\n")
    assert sections[0] == "test (300 images)" and sections[2] == "test_large: images no stage ever saw (600 images)"
    low, high = wilson(6 + 10, 1200)  # errors pooled over the two seeds
    assert f"| mae | 2 | 98.67 ± 0.47 [{100 * low:.1f}, {100 * high:.1f}] | – | – |" in table, table
    assert "| pixels: RBF SVM | 1 | 99.00 | – | – | – | – | – |" in table, table  # test table: seeds' column
    assert "| mae | 2 | 99.00 ± 0.47 | – | – | – | – | 99.00 |" in table, table


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
            assert float(row["errors"]) == group[f"metrics.{split}_errors"].sum()
            checked += 1
    assert checked == len(csv_rows) == 9
