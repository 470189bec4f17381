"""One owner per run folder: the lock file, its stale-owner rules, and two real trainers on one folder."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitssl.engine.lock import LOCK_FILE, RunFolderBusy, RunFolderLock

from launching import ROOT, env

HOLD = "import sys, time; from vitssl.engine.lock import RunFolderLock; RunFolderLock(sys.argv[1]).acquire(); " \
       "print('locked', flush=True); time.sleep(600)"


def holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_owner_is_named_and_a_dead_one_is_replaced(tmp_path):
    proc = holder(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusy, match=rf"in use by pid {proc.pid} on host {socket.gethostname()} since "):
            RunFolderLock(tmp_path / "run").acquire()
    finally:
        proc.kill()
        proc.wait()
    lock = RunFolderLock(tmp_path / "run")
    lock.acquire()  # the owner died without releasing: a stale lock
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    # our own pid, but a different process start time: the process that wrote it is gone
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0,
                                                "proc_start": "1", "token": "old"}))
    lock = RunFolderLock(folder)
    lock.acquire()
    lock.release()


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "started": 0, "token": "x"}))
    with pytest.raises(RunFolderBusy, match=r"another host: .*delete .*\.lock if it is gone"):
        RunFolderLock(folder).acquire()


@pytest.mark.slow
def test_a_second_trainer_on_the_same_folder_refuses_in_one_line(mnist012, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, str(ROOT / "launch/pretrain.py"), "--config", str(ROOT / "configs/mnist012/mae.yaml"),
            f"data.shards={mnist012}", f"run.output_dir={out}", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "data.batch_size=8", "run.epochs=50", "run.checkpoint_every=5", "run.log_every=5"]
    first = subprocess.Popen(args, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint-00000005").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = subprocess.run(args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"error: {out} is in use by pid {first.pid} on host {socket.gethostname()} since ")
        assert lines[0].endswith(": stop that trainer first, or set another run.output_dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the owner died without cleaning up: the same command takes over and resumes
    third = subprocess.run(args + ["run.max_steps=12"], cwd=tmp_path, env=env(), capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "resumed from" in third.stdout
    assert not (out / LOCK_FILE).exists()
