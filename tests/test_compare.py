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

from vitssl.eval.compare import collect, to_markdown  # noqa: E402

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
    assert sorted(mae.accuracy["finetune"]) == [0.97, 0.99]
    assert "linear" not in mae.accuracy
    assert mae.seeds == {"0", "1"} and scratch.seeds == {"0"}
    assert sorted(mae.pretrain_time_s) == [40.0, 60.0]
    assert sorted(mae.pretrain_images_per_s) == [200.0, 400.0]  # median of each run's history
    assert scratch.pretrain_time_s == []
    table = to_markdown(rows)
    assert "| mae | 2 | 98.00 ± 1.41 | – | 90.00 ± 0.00 | 50.0 ± 14.1 | 300 ± 141 |" in table, table
    assert "| none (scratch) | 1 | 95.00 | – | – | – | – |" in table, table
    return table


def test_compare_sqlite_store_and_cli_outputs(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill(uri)
    table = check_rows(uri)
    n_runs = len(mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name(EXP).experiment_id]))
    out = tmp_path / "cmp"
    assert compare_cli.main(["--experiment", EXP, "--tracking-uri", uri, "--out", str(out)]) == 0
    assert capsys.readouterr().out == table
    assert table in (out / "comparison.md").read_text()
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["objective"] == "mae" and float(rows[1]["finetune_mean"]) == pytest.approx(0.98)
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
