"""A token planted in data.shards (URL credentials and a query token) and in a pipe: command is used
to read the data but appears in no file of the run folder and nowhere in the MLflow store."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vitssl.redaction import redact_argv, redact_spec, redact_text

from http_shards import http_server
from launching import ROOT, client, env

TOKEN = "s3cr3tTOKENx9"


def test_redaction_of_urls_commands_and_lines():
    assert redact_spec(f"https://user:{TOKEN}@host/d?sig={TOKEN}&v=1") == "https://***@host/d?sig=***&v=***"
    assert redact_spec(f"pipe:aws s3 cp s3://b/train-000001.tar - --key {TOKEN}") == "pipe:*** (train-000001.tar)"
    assert redact_argv(["x.py", f"data.shards=pipe:curl -H 'k: {TOKEN}' h/train-{{0..2}}.tar", "run.name=a"]) == \
        "x.py data.shards=pipe:*** (train-{0..2}.tar) run.name=a"
    line = f"shard pipe:cat /d/{TOKEN}/train-000000.tar: the command exited with status 1"
    assert redact_text(line) == "shard pipe:*** (train-000000.tar): the command exited with status 1"
    assert redact_spec("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert redact_argv([f"data.shards=http://h/train-0.tar?sig={TOKEN}::pipe:cat t/test-0.tar"]) == \
        "data.shards=http://h/train-0.tar?sig=***::pipe:*** (test-0.tar)"


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.slow
def test_a_planted_token_is_in_no_file_and_not_in_the_mlflow_store(mnist012, tmp_path):
    with http_server(mnist012.parent) as url:
        host = url.removeprefix("http://")
        shards = (f"http://user:{TOKEN}@{host}/{mnist012.name}/train-000000.tar?sig={TOKEN}"
                  f"::pipe:cat {mnist012}/test-000000.tar # {TOKEN}")
        cmd = [sys.executable, str(ROOT / "launch/pretrain.py"), "--config", str(ROOT / "configs/mnist012/mae.yaml"),
               f"data.shards={shards}", f"run.output_dir={tmp_path}/run", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
               "data.batch_size=32", "run.epochs=1", "run.max_steps=3", "run.figure_every=0"]
        out = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "step 3" in out.stdout + out.stderr or (tmp_path / "run/checkpoint-00000003").is_dir()
    [run] = client(tmp_path).search_runs(experiment_ids=[client(tmp_path).get_experiment_by_name("mnist012").experiment_id])
    assert run.data.params["data.shards"] == "pipe:*** (test-000000.tar)"  # a spec with a command: all of it
    assert _files_holding(tmp_path, TOKEN.encode()) == []  # run folder, checkpoints, mlflow.db, mlruns/ artifacts
    assert TOKEN not in out.stdout + out.stderr
