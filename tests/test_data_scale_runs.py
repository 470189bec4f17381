"""Data at scale through the real entry points under `accelerate launch`: training from an HTTP URL
(a real `python -m http.server`) and from a `pipe:` source, the 6-epoch run on 50,50,50,50,1 shards
with 2 processes, and an elastic resume (2 processes x 8 -> 1 process x 16)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from fixtures import make_mnist_shards
from http_shards import http_server
from launching import client, env, last_lines, launch, launch_cmd, metric

MAE = "configs/mnist012/mae.yaml"
pytestmark = pytest.mark.slow


def common(shards, cwd: Path, name: str) -> list[str]:
    return [f"data.shards={shards}", f"run.output_dir={cwd}/{name}", f"run.tracking_uri=sqlite:///{cwd}/mlflow.db",
            "data.batch_size=8", "run.log_every=1"]


def encoder_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(checkpoint) / "encoder.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def shards_201(tmp_path_factory):
    """201 train samples in shards of 50, 50, 50, 50, 1 (the issue's layout)."""
    return make_mnist_shards(tmp_path_factory.mktemp("s201") / "d", "--train-per-class", "67", "--test-per-class",
                             "4", "--shard-max-count", "50")


def test_train_from_http_and_from_a_pipe_source(mnist012, tmp_path):
    with http_server(mnist012.parent) as url:
        http = launch("pretrain.py", MAE, common(f"{url}/{mnist012.name}", tmp_path, "http") + ["run.max_steps=3"],
                      tmp_path)
    pipe_spec = f"pipe:cat {mnist012}/{{train,test}}-000000.tar"
    pipe = launch("pretrain.py", MAE, common(pipe_spec, tmp_path, "pipe") + ["run.max_steps=3"], tmp_path)
    local = launch("pretrain.py", MAE, common(mnist012, tmp_path, "local") + ["run.max_steps=3"], tmp_path)
    mlc = client(tmp_path)
    losses = [metric(mlc, last_lines(out)["mlflow run id"], "loss") for out in (http, pipe, local)]
    assert len(losses[0]) == 3
    # one train shard: local data gets 8 streams, remote data one per shard; same data, other order
    assert losses[0] == losses[1]
    runs = [mlc.get_run(last_lines(out)["mlflow run id"]) for out in (http, pipe, local)]
    assert all(run.info.status == "FINISHED" for run in runs)
    # the shards as MLflow dataset inputs, whatever their source. The same manifest has the same digest,
    # so MLflow files the local run under the dataset the HTTP run logged first.
    sources = [{d.dataset.source_type for d in run.inputs.dataset_inputs} for run in runs]
    assert sources[:2] == [{"http"}, {"code"}]
    digests = [{d.dataset.digest for d in run.inputs.dataset_inputs} for run in runs]
    assert digests[0] == digests[2] and len(digests[0]) == 2


def test_six_epochs_on_uneven_shards_with_two_processes(shards_201, tmp_path):
    out = launch("pretrain.py", MAE, common(shards_201, tmp_path, "six") + ["run.epochs=6"], tmp_path, nproc=2)
    ids = last_lines(out)
    # 201 samples, global batch 16: 12 steps in every epoch (9 samples left out), never 6 nor a skipped epoch
    assert Path(ids["checkpoint"]).name == f"checkpoint-{6 * 12:08d}"
    mlc = client(tmp_path)
    assert len(metric(mlc, ids["mlflow run id"], "epoch_loss")) == 6
    assert len(metric(mlc, ids["mlflow run id"], "loss")) == 6 * 12


def test_elastic_resume_two_processes_to_one_at_double_batch(mnist012, tmp_path):
    """2 processes x 8 cut at a checkpoint, resumed on 1 process x 16, ends where the uninterrupted
    2-process run ends. Not bit-equal: 1 process averages the loss over 16 samples where 2 processes
    average over 8 and all-reduce the gradients, so float sums differ in order (~1e-7 a step)."""
    # The lr is pinned: the float-order gap grows with it, and the recipe's lr is tuned for accuracy.
    args = ["run.epochs=2", "run.checkpoint_every=5", "run.log_every=5", "optim.lr=1e-4"]
    full = launch("pretrain.py", MAE, common(mnist012, tmp_path, "full") + args, tmp_path, nproc=2)
    full_ckpt = last_lines(full)["checkpoint"]

    out_dir = tmp_path / "cut"
    cut_args = common(mnist012, tmp_path, "cut") + args
    proc = subprocess.Popen(launch_cmd("pretrain.py", MAE, cut_args, nproc=2), cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not (out_dir / "checkpoint-00000010").exists():  # epoch 0 of 2 (18 steps per epoch)
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)
    # torchrun's workers run in sessions of their own: kill the launcher's whole process tree
    for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        child.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not (out_dir / Path(full_ckpt).name).exists(), "the run ended before the cut"

    resumed = launch("pretrain.py", MAE, cut_args + ["data.batch_size=16"], tmp_path, nproc=1)
    assert "resumed from" in resumed.stdout
    assert Path(last_lines(resumed)["checkpoint"]).name == Path(full_ckpt).name
    a, b = encoder_weights(full_ckpt), encoder_weights(last_lines(resumed)["checkpoint"])
    print(f"elastic resume: max |full - resumed| weight difference {max((a[k] - b[k]).abs().max() for k in a):.2e}")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    mlc = client(tmp_path)
    full_loss = metric(mlc, last_lines(full)["mlflow run id"], "loss")
    resumed_loss = metric(mlc, last_lines(resumed)["mlflow run id"], "loss")
    assert len(full_loss) == len(resumed_loss)
    torch.testing.assert_close(torch.tensor(resumed_loss[-3:]), torch.tensor(full_loss[-3:]), atol=1e-5, rtol=1e-5)
