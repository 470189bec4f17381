"""Tracking outages against a real `mlflow server`: killed mid-run, down at the end, never started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import mlflow
import pytest

from vitssl.tracking.buffered import BufferedRun, TrackingUnavailable
from vitssl.tracking.mlflow_run import MlflowRun
from vitssl.tracking.spool import Spool

from launching import ROOT, free_port, wait_until
from mlflow_server import start_server, wait_healthy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class Server:
    """One store, a fixed port: kill it and bring it back as an outage does."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def up(self) -> None:
        self.proc = start_server(self.root, self.port)
        wait_healthy(self.url, self.proc)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
        self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server")
    s.root.mkdir()
    s.up()
    yield s
    if s.proc.poll() is None:
        s.kill()


def steps(client: mlflow.MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_server_killed_mid_run_training_goes_on_and_every_step_arrives_once(server, tmp_path):
    run = BufferedRun(True, server.url, "outage", tmp_path / "run", probe_every=0.5)
    run_id = run.start("r", {"kind": "test"})
    for step in range(1, 6):
        run.log_metrics({"loss": 1.0 / step}, step)
    wait_until(lambda: run._queue.unfinished_tasks == 0)
    server.kill()
    for step in range(6, 11):
        run.log_metrics({"loss": 1.0 / step}, step)
    fig = plt.figure()
    run.log_figure(fig, "figures/during_outage.png")
    plt.close(fig)
    wait_until(lambda: len(run.spool.read()) == 6)  # the calls made while it was down are on disk
    server.up()
    step, deadline = 10, time.monotonic() + 120
    while run.spool or run.offline:  # training goes on logging while the server comes back
        assert time.monotonic() < deadline, "the spool was not replayed"
        step += 1
        run.log_metrics({"loss": 1.0 / step}, step)
        time.sleep(0.1)
    run.end("FINISHED")
    client = mlflow.MlflowClient(tracking_uri=server.url)
    assert steps(client, run_id) == list(range(1, step + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id, "figures")] == ["figures/during_outage.png"]


@pytest.mark.slow
def test_server_down_at_the_end_the_replay_command_sets_the_final_status(server, tmp_path):
    folder = tmp_path / "run"
    run = BufferedRun(True, server.url, "outage", folder, probe_every=0.5, close_timeout=2)
    run_id = run.start("r", {})
    run.log_metrics({"loss": 1.0}, 1)
    wait_until(lambda: run._queue.unfinished_tasks == 0)
    server.kill()
    run.log_metrics({"loss": 0.5}, 2)
    run.end("KILLED")
    assert [op["method"] for op in Spool(folder).read()] == ["log_metrics", "end"]
    server.up()
    cmd = [sys.executable, "-m", "vitssl.tracking.spool", str(folder), "--tracking-uri", server.url]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"replayed 2 call(s) into run {run_id} at {server.url}"
    client = mlflow.MlflowClient(tracking_uri=server.url)
    assert steps(client, run_id) == [1, 2]
    assert client.get_run(run_id).info.status == "KILLED"
    assert not Spool(folder)


@pytest.mark.slow
def test_a_resume_replays_the_spool_then_reopens_the_run(server, tmp_path):
    folder = tmp_path / "run"
    run = BufferedRun(True, server.url, "outage", folder, probe_every=0.5, close_timeout=1)
    run_id = run.start("r", {})
    wait_until(lambda: run._queue.unfinished_tasks == 0)
    server.kill()
    run.log_metrics({"loss": 1.0}, 1)
    run.end("KILLED")
    server.up()
    resumed = BufferedRun(True, server.url, "outage", folder)
    assert resumed.start("r", {}, run_id=run_id) == run_id
    client = mlflow.MlflowClient(tracking_uri=server.url)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert steps(client, run_id) == [1]
    resumed.end("FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_unreachable_at_start_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = BufferedRun(True, url, "outage", tmp_path / "run", start_timeout=3, probe_every=1)
    with pytest.raises(TrackingUnavailable, match=r"unreachable for 3 s .*run\.tracking_required=false"):
        run.start("r", {})
    assert not (tmp_path / "run").exists(), "nothing written when the run refuses to start"


@pytest.mark.slow
def test_not_required_trains_offline_and_the_replay_creates_the_run(tmp_path):
    folder = tmp_path / "run"
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run = BufferedRun(True, url, "offline", folder, required=False, start_timeout=2, probe_every=1)
    assert run.start("offline-run", {"kind": "test"}) is None
    for step in (1, 2, 3):
        run.log_metrics({"loss": float(step)}, step)
    run.end("FINISHED")
    proc = start_server(root, port)
    try:
        wait_healthy(url, proc)
        out = subprocess.run([sys.executable, "-m", "vitssl.tracking.spool", str(folder), "--tracking-uri", url,
                              "--experiment", "offline"], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        client = mlflow.MlflowClient(tracking_uri=url)
        [found] = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
        assert found.info.run_name == "offline-run" and found.data.tags["kind"] == "test"
        assert found.info.status == "FINISHED" and steps(client, found.info.run_id) == [1, 2, 3]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_replay_never_logs_a_step_twice(tmp_path):
    """A call cut off by an outage may have reached the server before the connection dropped."""
    run = MlflowRun(True, f"sqlite:///{tmp_path / 'mlflow.db'}", "replay")
    run_id = run.start("r", {})
    run.log_metrics({"loss": 1.0}, 1)  # reached the server, yet spooled as failed
    spool = Spool(tmp_path / "run")
    for step in (1, 2):
        spool.append(run_id, "log_metrics", {"metrics": {"loss": float(step)}, "step": step})
    spool.append(run_id, "end", {"status": "FINISHED"})
    assert spool.replay(MlflowRun(True, run.tracking_uri, "replay")) == run_id
    client = mlflow.MlflowClient(tracking_uri=run.tracking_uri)
    assert steps(client, run_id) == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED" and not spool
