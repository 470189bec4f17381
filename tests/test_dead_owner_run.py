"""A trainer killed outright leaves its MLflow run RUNNING and its lock behind; the next owner of the
folder marks that run KILLED when it takes the stale lock over."""
from __future__ import annotations

import subprocess
import sys

import mlflow

from vitssl.config import PretrainConfig, build_config
from vitssl.engine.lock import LOCK_FILE, RunFolderLock
from vitssl.engine.run import RunSession

from launching import env

HOLD = ("import sys, time; from vitssl.engine.lock import RunFolderLock; lock = RunFolderLock(sys.argv[1]); "
        "lock.acquire(); lock.record(mlflow_run_id=sys.argv[2]); print('locked', flush=True); time.sleep(600)")


def test_the_next_owner_marks_a_dead_trainers_run_killed(tmp_path, mnist012):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    dead_run = client.create_run(client.create_experiment("e")).info.run_id  # RUNNING
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run"), dead_run], stdout=subprocess.PIPE,
                            text=True, env=env())
    assert proc.stdout.readline().strip() == "locked"
    proc.kill()  # as kill -9: no status written, the lock left behind
    proc.wait()
    assert RunFolderLock(tmp_path / "run").read()["mlflow_run_id"] == dead_run

    cfg = build_config(PretrainConfig, {"data": {"shards": str(mnist012)},
                                        "run": {"output_dir": str(tmp_path / "run"), "tracking_uri": uri}})
    with RunSession(cfg, "e", "next", {}):
        assert client.get_run(dead_run).info.status == "KILLED"
    assert not (tmp_path / "run" / LOCK_FILE).exists()
