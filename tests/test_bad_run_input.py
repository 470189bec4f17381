"""Bad input to a training run: one `error:` line, a non-zero exit, nothing half-written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vitssl.tracking.spool import Spool

from launching import ROOT, env, free_port

MAE = str(ROOT / "configs/mnist012/mae.yaml")


def pretrain(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch/pretrain.py"), "--config", MAE, *overrides],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in out.stderr.splitlines() if ln.startswith("error: ") or "Traceback" in ln]


@pytest.mark.parametrize("override, message", [
    ("optim.lr=.inf", "optim.lr: Input should be a finite number"),  # config errors: a header + one line per key
    ("run.resume=/nonexistent", "error: run.resume='/nonexistent': not a complete checkpoint folder"),
])
def test_bad_override_is_an_error_message_and_nothing_is_written(tmp_path, mnist012, override, message):
    out = pretrain(tmp_path, f"data.shards={mnist012}", f"run.output_dir={tmp_path}/run", override)
    assert out.returncode == 2
    assert len(error_lines(out)) == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem: the first checkpoint (~2 MB of weights and optimizer state) does not fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_partial_folder(tmp_path, mnist012, small_disk):
    out = pretrain(tmp_path, f"data.shards={mnist012}", f"run.output_dir={small_disk}/run",
                   f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "run.max_steps=2", "run.checkpoint_every=1")
    assert out.returncode == 2, out.stderr[-3000:]
    [line] = error_lines(out)
    assert line.startswith("error: writing checkpoint 1 into") and "the partial folder was removed" in line, line
    assert sorted(p.name for p in (small_disk / "run").iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_tracking_server_never_started_is_one_line_or_an_opt_in_offline_run(tmp_path, mnist012):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    base = [f"data.shards={mnist012}", f"run.tracking_uri={url}", "run.max_steps=3", "run.figure_every=0"]
    out = pretrain(tmp_path, *base, f"run.output_dir={tmp_path}/required")
    assert out.returncode == 2
    [line] = error_lines(out)
    assert line.startswith(f"error: MLflow at {url} unreachable for 20 s") and "run.tracking_required=false" in line

    out = pretrain(tmp_path, *base, f"run.output_dir={tmp_path}/optional", "run.tracking_required=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training without tracking" in out.stdout
    spooled = Spool(tmp_path / "optional").read()
    assert spooled[0]["method"] == "start" and spooled[-1] == {"run_id": None, "method": "end",
                                                               "kwargs": {"status": "FINISHED"}}
