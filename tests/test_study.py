"""The study: the scheduler (dependencies, failures, concurrency) with real worker processes, the
pixel baselines, and one end-to-end study whose MLflow children reproduce compare.py's CSV."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from vitssl.study.pixel_baselines import fit_baseline
from vitssl.study.scheduler import Job, Slots, plan_slots, run_jobs

from launching import env
from study_jobs import meet, stamp, start_method, visible_gpu

ROOT = Path(__file__).resolve().parents[1]


def events(log: Path) -> list[tuple[str, str, float]]:
    return sorted(((kind, name, float(t)) for kind, name, t in (line.split() for line in log.read_text().splitlines())),
                  key=lambda e: e[2])


def test_scheduler_respects_dependencies_and_skips_after_a_failure(tmp_path):
    log = str(tmp_path / "events.txt")
    jobs = [Job("pre", stamp, dict(log=log, name="pre")),
            Job("ft", stamp, dict(log=log, name="ft"), after=("pre",)),
            Job("lin", stamp, dict(log=log, name="lin"), after=("pre",)),
            Job("bad", stamp, dict(log=log, name="bad", fail=True)),
            Job("after-bad", stamp, dict(log=log, name="after-bad"), after=("bad",)),
            Job("solo", stamp, dict(log=log, name="solo"))]
    reported = []
    outcomes = run_jobs(jobs, Slots(workers=2, threads=1), reported.append)
    assert {n: o.status for n, o in outcomes.items()} == {"pre": "done", "ft": "done", "lin": "done", "bad": "failed",
                                                          "after-bad": "skipped", "solo": "done"}
    assert outcomes["ft"].value == "FT" and "failed on purpose" in outcomes["bad"].error
    assert sorted(o.name for o in reported) == sorted(outcomes)
    when = {(kind, name): t for kind, name, t in events(Path(log))}
    assert when[("start", "ft")] >= when[("end", "pre")] and when[("start", "lin")] >= when[("end", "pre")]
    assert ("start", "after-bad") not in when


def test_one_worker_starts_the_ready_job_heading_the_longest_chain(tmp_path):
    """Costs order the ready jobs (the study gives them in seconds per stage): a long fine-tune
    whose pretraining is done goes before shorter independent jobs, so it is not left for last."""
    log = str(tmp_path / "events.txt")
    jobs = [Job("short", stamp, dict(log=log, name="short"), cost=1.0),
            Job("pre", stamp, dict(log=log, name="pre"), cost=2.0),
            Job("mid", stamp, dict(log=log, name="mid"), cost=4.0),
            Job("ft", stamp, dict(log=log, name="ft"), after=("pre",), cost=5.0)]
    run_jobs(jobs, Slots(workers=1, threads=1))
    assert [name for kind, name, _ in events(Path(log)) if kind == "start"] == ["pre", "ft", "mid", "short"]


def test_scheduler_runs_independent_jobs_at_the_same_time(tmp_path):
    """Each job waits for the other to start: with one job at a time the first would give up."""
    jobs = [Job("a", meet, dict(folder=str(tmp_path), name="a", partner="b")),
            Job("b", meet, dict(folder=str(tmp_path), name="b", partner="a"))]
    outcomes = run_jobs(jobs, Slots(workers=2, threads=1))
    assert outcomes["a"].value is True and outcomes["b"].value is True


def test_workers_start_data_loader_workers_the_platform_way():
    """A spawned worker would spawn its DataLoader workers too, re-importing torch every epoch."""
    import multiprocessing

    outcomes = run_jobs([Job("m", start_method, {})], Slots(1, 1))
    assert outcomes["m"].value == multiprocessing.get_all_start_methods()[0]


def test_more_workers_than_gpus_share_them_round_robin(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert plan_slots() == Slots(2, 8, gpus=2)
    slots = plan_slots(jobs=3)
    assert slots == Slots(3, 5, gpus=2)
    jobs = [Job(n, visible_gpu, dict(folder=str(tmp_path), name=n, together=3)) for n in "abc"]
    outcomes = run_jobs(jobs, slots)
    assert sorted(o.value for o in outcomes.values()) == ["0", "0", "1"]


def test_scheduler_rejects_unknown_dependencies():
    with pytest.raises(ValueError, match="unknown jobs"):
        run_jobs([Job("a", stamp, {}, after=("nope",))], Slots(1, 1))


def test_pixel_baselines_choose_on_val_and_score_each_split_once():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 1, 6, 6))

    def split(n):
        y = np.repeat(np.arange(3), n)
        return centres[y] + 0.3 * rng.normal(size=(len(y), 1, 6, 6)), y

    data = {"train": split(20), "val": split(10), "test": split(10), "test_large": split(30)}
    data["test_large"][1][:3] = (data["test_large"][1][:3] + 1) % 3  # three wrong labels: three errors
    result = fit_baseline("pixels_logreg", data)
    assert result.params["C"] in (0.01, 0.1, 1.0, 10.0)
    assert result.metrics["test_large_n"] == 90 and result.metrics["test_large_errors"] == 3
    assert result.metrics["test_large_accuracy"] == pytest.approx(87 / 90)
    labels, predictions = result.predictions["test_large"]  # per image, for the paired tests
    assert (labels == data["test_large"][1]).all() and (labels != predictions).sum() == 3
    assert set(result.metrics) == {f"{s}_{k}" for s in ("val", "test", "test_large") for k in ("accuracy", "errors", "n")}


@pytest.fixture(scope="module")
def protocol_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "mnist012"
    subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--val-per-class", "100", "--large-test-rest",
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
    return out


@pytest.mark.slow
def test_study_runs_every_stage_as_a_child_and_search_runs_gives_the_table(protocol_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(ROOT / "launch/study.py"), "--objectives", "scratch", "mae", "--jobs", "2",
           "--shards", str(protocol_shards), "--out", str(tmp_path / "study"), "--tracking-uri", uri,
           "--experiment", "e2e", "--pretrain-override", "run.epochs=1", "--finetune-override", "run.epochs=1",
           "--finetune-override", "finetune.tsne=false", "--finetune-override", "finetune.linear_steps=20"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "study wall time" in out.stdout and "images/s" in out.stdout
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e").experiment_id
    (study,) = client.search_runs([exp], "tags.`vitssl.stage` = 'study'")
    assert study.info.status == "FINISHED" and study.data.metrics["wall_time_s"] > 0
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{study.info.run_id}'")
    stages = sorted((r.data.tags["vitssl.stage"], r.data.tags.get("vitssl.objective"), r.data.tags.get("vitssl.mode", ""))
                    for r in children)
    # every run of the study is its child: 1 pretraining, 2 x 3 evaluations, 2 pixel baselines
    assert len(children) == len(client.search_runs([exp])) - 1 == 1 + 6 + 2, stages
    assert ("pretrain", "mae", "") in stages and ("finetune", "none", "knn") in stages
    # the README's one-liner gives compare.py's numbers
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["e2e"], filter_string="tags.`vitssl.stage` = 'finetune'")
    with open(tmp_path / "study" / "comparison.csv") as f:
        table = {(r["objective"], r["mode"], r["split"]): float(r["accuracy_mean"]) for r in csv.DictReader(f)}
    for _, run in df.iterrows():
        for split in ("val", "test", "test_large"):
            key = (run["tags.vitssl.objective"], run["tags.vitssl.mode"], split)
            assert table[key] == pytest.approx(run[f"metrics.{split}_accuracy"], abs=1e-6), key
    metrics = json.loads((tmp_path / "study" / "runs" / "mae-s0-finetune" / "eval_metrics.json").read_text())
    assert {"val_accuracy", "test_large_accuracy"} <= set(metrics)
    # every evaluation logged its per-image predictions; the printed tables say what their brackets are
    # and carry the paired tests, whose files are the study run's artifacts
    from vitssl.eval.predictions import from_csv

    predictions = from_csv((tmp_path / "study" / "runs" / "mae-s0-finetune" / "predictions.csv").read_text())
    assert int((~predictions["test_large"].correct).sum()) == metrics["test_large_errors"]
    assert out.stdout.count("in brackets the 95% Wilson interval") == 3 and "exact McNemar" in out.stdout
    with open(tmp_path / "study" / "comparison_paired.csv") as f:
        paired = list(csv.DictReader(f))
    tested = {(r["objective"], r["mode"], r["reference"]) for r in paired if r["split"] == "test"}
    assert {("mae", "finetune", "none"), ("mae", "knn", "none")} <= tested
    assert len({ref for _, _, ref in tested if ref.startswith("pixels_")}) == 1  # the one best on val
    logged = {a.path for a in client.list_artifacts(study.info.run_id, "comparison")}
    assert "comparison/comparison_paired.csv" in logged and "comparison/comparison_seeds.csv" in logged


@pytest.mark.parametrize("job", ["linger", "stop_on_sigterm"])
def test_workers_die_with_the_study(tmp_path, job):
    """A killed study leaves no worker behind (PR_SET_PDEATHSIG): neither one its SIGTERM kills nor one
    whose job, like a trainer, turns SIGTERM into a clean return and would wait for the next job."""
    import os
    import signal

    code = ("import sys; sys.path[:0] = sys.argv[1:3]\n"
            f"from study_jobs import {job}\nfrom vitssl.study.scheduler import Job, Slots, plan_slots, run_jobs\n"
            f"run_jobs([Job('a', {job}, dict(pid_file={str(tmp_path / 'pid')!r}))], Slots(1, 1))\n")
    study = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT / "ssl")])
    pid_file = tmp_path / "pid"
    for _ in range(1200):  # the worker starts (spawn) and writes its pid
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    study.send_signal(signal.SIGKILL)
    study.wait()
    for _ in range(600):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":  # exited, not yet reaped
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived the study by a minute")


def test_stage_images_count_max_steps(tmp_path):
    """images/s of a stage stopped by run.max_steps counts the batches it ran, not its epochs."""
    from vitssl.config import PretrainConfig, build_config
    from vitssl.study.stages import trained_images

    shard = {"name": "train-000000.tar", "count": 300, "bytes": 1, "sha256": "0" * 64}  # counts are all it reads
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": {"count": 300, "shards": [shard]}}}))
    run = {"epochs": 30}
    cfg = build_config(PretrainConfig, {"data": {"shards": str(tmp_path), "batch_size": 32}, "run": run})
    assert trained_images(cfg) == 9000
    cfg = build_config(PretrainConfig, {"data": {"shards": str(tmp_path), "batch_size": 32},
                                        "run": {**run, "max_steps": 5}})
    assert trained_images(cfg) == 160
