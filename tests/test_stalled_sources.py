"""A source that stalls forever (a real HTTP server that stops sending mid-body): one error line
within the configured bounds, and a stop signal ends a trainer blocked on it within seconds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitssl.data import DataError, make_train_loader
from vitssl.data.fetch import CommandStream, ReadLimits, configure_reads, read_limits
from vitssl.engine.checkpoint import COMPLETE, latest_checkpoint
from vitssl.engine.lock import LOCK_FILE

from fixtures import make_mnist_shards
from http_shards import stalling_http_server
from launching import ROOT, client, env, wait_until


@pytest.fixture(scope="module")
def m3x100(tmp_path_factory) -> Path:
    """3 train and 3 test shards of 100, in <root>/d."""
    return make_mnist_shards(tmp_path_factory.mktemp("stall") / "d", "--shard-max-count", "100")


@pytest.fixture
def limits():
    before = read_limits()
    yield configure_reads
    configure_reads(before)


def test_a_stalled_shard_is_one_line_after_its_retries(m3x100, limits):
    limits(ReadLimits(min_bytes_per_s=1024, stall_s=1, deadline_s=60, retries=1, retry_delay_s=0.1))
    with stalling_http_server(m3x100.parent, ["train-000001.tar"]) as url:
        loader = make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1, shuffle=False, streams=1)
        with pytest.raises(DataError) as err:
            list(loader)
    assert str(err.value) == (f"shard {url}/d/train-000001.tar: curl exit 28: stalled: less than "
                              "data.read_min_bytes_per_s=1024 B/s for data.read_stall_s=1 s after 2 attempts")


def test_a_manifest_past_its_deadline_is_one_line(m3x100, limits):
    limits(ReadLimits(min_bytes_per_s=1, stall_s=30, deadline_s=2, retries=3, retry_delay_s=0.1))
    with stalling_http_server(m3x100.parent, ["manifest.json"]) as url:
        with pytest.raises(DataError, match=r"no manifest.json at .*/d \(curl exit 28: not done within "
                                            r"data.read_deadline_s=2 s; raise it for large shards"):
            make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1)


@pytest.mark.parametrize("bounds, why", [
    (ReadLimits(min_bytes_per_s=1024, stall_s=1, deadline_s=60), "stalled: less than data.read_min_bytes_per_s=1024 "
                                                                 "B/s for data.read_stall_s=1 s"),
    (ReadLimits(min_bytes_per_s=1, stall_s=60, deadline_s=2), "not done within data.read_deadline_s=2 s; raise "
                                                              "it for large shards on a slow link"),
], ids=["stall", "deadline"])
def test_a_stalled_pipe_command_is_ended_with_one_line(m3x100, limits, bounds, why):
    """A ``pipe:`` command that writes the first KiB of a shard, then nothing: ended (its whole process
    group) within the bounds, one line, not retried."""
    limits(bounds)
    shard = m3x100 / "train-000000.tar"
    with pytest.raises(DataError) as err:  # a URL list: its shards are counted (read) first
        make_train_loader(f"pipe:head -c 1024 {shard} && sleep {SLEEP_MARK}", batch_size=8, rank=0, world_size=1)
    assert str(err.value) == f"shard pipe:*** (train-000000.tar): the command was ended: {why}"
    # killed, it is gone within moments even on a loaded machine; left running, it would sleep SLEEP_MARK s
    wait_until(lambda: not [p for p in os.listdir("/proc") if p.isdigit() and _is_our_sleep(int(p))], timeout=10,
               what="the command outlived it")


def test_a_pipe_reader_busy_elsewhere_is_no_stall(m3x100):
    """The bounds count the time the reader waits for the command, not the time it spends elsewhere (a
    trainer saving a checkpoint): a pause far longer than read_stall_s, at a rate far below the limit."""
    shard = m3x100 / "train-000000.tar"
    stream = CommandStream(f"cat {shard}", ReadLimits(min_bytes_per_s=1 << 20, stall_s=3, deadline_s=60))
    try:
        first = stream.read(512)
        time.sleep(4)  # busy elsewhere: 512 bytes in 4 s of wall time, 1 MiB/s asked
        assert first + stream.read() == shard.read_bytes()
    finally:
        stream.close()


SLEEP_MARK = 617  # a sleep of this many seconds is this test's stalled command


def _is_our_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{SLEEP_MARK}\0".encode()
    except OSError:
        return False


@pytest.mark.parametrize("spec, instead", [
    ("gs://bucket/d/train-{000000..000002}.tar", "pipe:gsutil cat gs://bucket/d/train-{000000..000002}.tar"),
    ("s3://bucket/d", "pipe:aws s3 cp s3://bucket/d/train-{000000..000009}.tar -"),
])
def test_a_scheme_nothing_bounds_is_refused_with_the_pipe_form_to_use(spec, instead):
    scheme = spec.split(":")[0]
    with pytest.raises(DataError) as err:
        make_train_loader(spec, batch_size=8, rank=0, world_size=1)
    assert str(err.value) == (f"cannot read {spec}: {scheme}:// is not read with bounds (a low-speed limit and a "
                              f"deadline): use http(s):// (e.g. a signed URL) or a command per shard, {instead}")


# ---------------------------------------------------------------- a trainer on a stalled source

MAE = "configs/mnist012/mae.yaml"


def trainer(url: str, tmp_path: Path, *extra: str, session: bool = False) -> subprocess.Popen:
    """The pretraining entry point on ``url``; ``session``: in a process group of its own, to be signalled
    as a job (the trainer and its DataLoader workers), as Slurm and systemd signal one."""
    cmd = [sys.executable, str(ROOT / "launch/pretrain.py"), "--config", str(ROOT / MAE),
           f"data.shards={url}/d", f"run.output_dir={tmp_path}/run", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
           f"data.batch_size={BATCH}", "data.shuffle=false", "data.streams=1", "run.epochs=5",
           f"run.checkpoint_every={EVERY}", f"run.log_every={EVERY}", "run.figure_every=0", *extra]
    log = open(tmp_path / "log.txt", "w")
    return subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=session)


BATCH, EVERY = 32, 2  # few steps: the trainer reaches the stall soon


def stop(proc: subprocess.Popen, tmp_path: Path) -> tuple[int, str]:
    """SIGTERM; the trainer must end within a minute (else killed, and the test fails)."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_sigterm_to_the_job_ends_a_trainer_blocked_on_a_stalled_shard(m3x100, tmp_path):
    """SIGTERM to the trainer and its DataLoader worker while the worker is blocked in a stalled transfer
    and the trainer waits on it: every step the source allowed is saved, the run is KILLED, rc 143.
    Resumed without a signal, the same stall ends the run with one line, rc 2, the run FAILED."""
    # shard 0 arrives whole (100 samples), shard 1 stalls before its first sample: the source delivers
    # 100 // BATCH = 3 batches. The trainer's last agreement point before the stall is step 2 (a
    # checkpoint), so a signal after that checkpoint can only be answered at the blocked read.
    delivered, last_agreement = 100 // BATCH, 100 // BATCH // EVERY * EVERY
    marks = tmp_path / "stalled"
    marks.mkdir()
    run = tmp_path / "run"
    with stalling_http_server(m3x100.parent, ["train-000001.tar"], marks) as url:
        proc = trainer(url, tmp_path, "data.num_workers=1", "data.read_stall_s=600", session=True)
        try:
            wait_until(lambda: proc.poll() is not None or ((marks / "train-000001.tar").exists() and (
                run / f"checkpoint-{last_agreement:08d}" / COMPLETE).exists()), 240, "no stall after the last checkpoint")
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)  # the read grace is seconds; a blocked read never ends by itself here
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out = (tmp_path / "log.txt").read_text()
        assert proc.returncode == 143, out[-3000:]
        assert "Traceback" not in out and f"stop requested while waiting for data on process 0 (step {delivered})" \
            in out, out[-3000:]
        assert latest_checkpoint(run).name == f"checkpoint-{delivered:08d}"  # every step the source allowed
        [run_info] = client(tmp_path).search_runs(
            experiment_ids=[client(tmp_path).get_experiment_by_name("mnist012").experiment_id])
        assert run_info.info.status == "KILLED"
        assert not (run / LOCK_FILE).exists()
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_our_curl(int(p))], "a transfer outlived it"

        proc = trainer(url, tmp_path, "data.num_workers=1", "data.read_stall_s=1", "data.read_retries=0")
        try:
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert f"from {run / f'checkpoint-{delivered:08d}'} (step {delivered})" in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [f"error: shard {url}/d/train-000001.tar: curl exit 28: stalled: less than "
                      "data.read_min_bytes_per_s=1024 B/s for data.read_stall_s=1 s"], out[-3000:]
    assert client(tmp_path).get_run(run_info.info.run_id).info.status == "FAILED"


def _is_our_curl(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(b"curl\0") and b"--speed-time\x00600\x00" in cmdline  # this test's stall_s


@pytest.mark.slow
def test_sigterm_during_start_up_and_a_stall_without_one(m3x100, tmp_path):
    """SIGTERM while the manifest is read (start-up, before any step): exit 143, nothing left;
    left alone, the same stall ends within the read deadline with one error line."""
    marks = tmp_path / "stalled"
    marks.mkdir()
    with stalling_http_server(m3x100.parent, ["manifest.json"], marks) as url:
        proc = trainer(url, tmp_path, "data.read_stall_s=600")
        wait_until(lambda: proc.poll() is not None or (marks / "manifest.json").exists(), 120, "no manifest read")
        rc, out = stop(proc, tmp_path)
        assert rc == 143 and "Traceback" not in out, out[-3000:]
        assert not (tmp_path / "run" / LOCK_FILE).exists()

        (tmp_path / "second").mkdir()
        proc = trainer(url, tmp_path / "second", "data.read_stall_s=2", "data.read_retries=0")
        proc.wait(timeout=120)
        out = (tmp_path / "second/log.txt").read_text()
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no manifest.json at {url}/d (curl exit 28: stalled: less than "
                      "data.read_min_bytes_per_s=1024 B/s for data.read_stall_s=2 s): list the shards instead "
                      f"({url}/d/train-{{000000..000009}}.tar) or write one with `python -m data_prep index "
                      "<shard urls> --out <folder>`"], out[-3000:]
