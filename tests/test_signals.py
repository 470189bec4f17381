"""Signals as schedulers send them, with real launchers: to `accelerate launch`, to our launcher
(1 and 2 processes), to a trainer. Every case ends with a checkpoint, the MLflow run KILLED, no
trainer left running and no lock left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vitssl.engine.checkpoint import latest_checkpoint
from vitssl.engine.lock import LOCK_FILE

from launching import ROOT, client, env, launch_cmd, wait_until

pytestmark = pytest.mark.slow
MAE = "configs/mnist012/mae.yaml"


def overrides(shards: Path, tmp_path: Path) -> list[str]:
    # 37 steps/epoch x 50 epochs: far more than a test waits for
    return [f"data.shards={shards}", f"run.output_dir={tmp_path}/run", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "data.batch_size=8", "run.epochs=50", "run.checkpoint_every=5", "run.log_every=5", "run.figure_every=0"]


def our_launcher_cmd(nproc: int, args: list[str]) -> list[str]:
    cmd = launch_cmd("pretrain.py", MAE, args, nproc)
    return [sys.executable, str(ROOT / "launch/launcher.py"), *cmd[2:]]  # same arguments as `accelerate launch`


def start(cmd: list[str], tmp_path: Path) -> subprocess.Popen:
    """Started, and trained past its first checkpoint. Output goes to a file (a pipe nobody reads fills up)."""
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoint-00000005").exists():
        assert proc.poll() is None and time.time() < deadline, output(tmp_path)
        time.sleep(0.1)
    return proc


def output(tmp_path: Path) -> str:
    return (tmp_path / "log.txt").read_text()


def trainers(launcher: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(launcher.pid).children(recursive=True) if "pretrain.py" in " ".join(p.cmdline())]


def assert_stopped_cleanly(tmp_path: Path, procs: list[psutil.Process]) -> None:
    gone, alive = psutil.wait_procs(procs, timeout=120)
    assert not alive, "a trainer outlived its launcher"
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and int(last.name.split("-")[1]) < 37 * 50
    [run] = client(tmp_path).search_runs(experiment_ids=[client(tmp_path).get_experiment_by_name("mnist012").experiment_id])
    assert run.info.status == "KILLED"
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_accelerate_launch_one_process_signal_to_the_launcher_stops_the_trainer(mnist012, tmp_path, sig):
    launcher = start(launch_cmd("pretrain.py", MAE, overrides(mnist012, tmp_path)), tmp_path)
    procs = trainers(launcher)
    assert len(procs) == 1
    t0 = time.monotonic()
    launcher.send_signal(sig)
    launcher.wait(timeout=60)
    assert_stopped_cleanly(tmp_path, procs)
    print(f"{sig.name} to accelerate launch: trainer stopped {time.monotonic() - t0:.1f} s later")


@pytest.mark.parametrize("nproc", [1, 2])
def test_our_launcher_exits_143_without_a_traceback(mnist012, tmp_path, nproc):
    launcher = start(our_launcher_cmd(nproc, overrides(mnist012, tmp_path)), tmp_path)
    procs = trainers(launcher)
    assert len(procs) == nproc
    t0 = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=120)
    out = output(tmp_path)
    assert launcher.returncode == 143, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "stop requested: saving a checkpoint" in out
    assert_stopped_cleanly(tmp_path, procs)
    print(f"SIGTERM to launch/launcher.py ({nproc} proc): exit 143 after {time.monotonic() - t0:.1f} s")


def test_sigterm_to_a_trainer_exits_143_without_a_traceback(mnist012, tmp_path):
    cmd = [sys.executable, str(ROOT / "launch/pretrain.py"), "--config", str(ROOT / MAE), *overrides(mnist012, tmp_path)]
    trainer = start(cmd, tmp_path)
    os.kill(trainer.pid, signal.SIGTERM)
    trainer.wait(timeout=120)
    out = output(tmp_path)
    assert trainer.returncode == 143, out[-3000:]
    assert "Traceback" not in out and "interrupted: run the same command again to resume" in out
    assert_stopped_cleanly(tmp_path, [])


ORPHAN = """
import os, sys, time, pathlib
from vitssl.engine.lifetime import sigterm_when_parent_dies
from vitssl.engine.trainer import StopRequest
out = pathlib.Path(sys.argv[1])
assert sigterm_when_parent_dies()
with StopRequest() as stop:
    (out / "armed").write_text("")
    while not stop.requested:
        time.sleep(0.01)
(out / "stopped").write_text(str(os.getppid()))  # past the handler: a checkpoint and the run status now
deadline = time.time() + 60
while not (out / "go").exists() and time.time() < deadline:
    time.sleep(0.01)
time.sleep(1.0)
(out / "survived").write_text("")
"""
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(600)
"""
SUBREAPER = """
import ctypes, pathlib, subprocess, sys, time
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans below come here
launcher = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
(pathlib.Path(sys.argv[3]) / "launcher.pid").write_text(str(launcher.pid))
time.sleep(600)
"""


def wait_for(path: Path, timeout: float = 120) -> None:
    wait_until(path.exists, timeout, f"{path.name} never appeared")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_stopping_orphan_gets_no_second_sigterm_when_its_new_parent_ends(tmp_path):
    """The launcher dies: its SIGTERM stops the trainer, which is re-parented to a reaper. When that
    reaper ends (a subreaper here; a thread of a multi-threaded init does the same), Linux repeats
    the parent-death signal. It must not kill the trainer while it saves, after its handler is gone."""
    reaper = subprocess.Popen([sys.executable, "-c", SUBREAPER, LAUNCHER, ORPHAN, str(tmp_path)], env=env())
    try:
        wait_for(tmp_path / "armed")
        os.kill(int((tmp_path / "launcher.pid").read_text()), signal.SIGKILL)
        wait_for(tmp_path / "stopped", 30)
        assert int((tmp_path / "stopped").read_text()) == reaper.pid  # re-parented to the subreaper
    finally:
        reaper.kill()
        reaper.wait()
    (tmp_path / "go").write_text("")
    wait_for(tmp_path / "survived", 30)
