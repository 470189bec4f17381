"""Pretraining end to end under real `accelerate launch`: (a) 2 processes = 1 process, (b) exact
resume after an interruption, (d) the loss falls, (e) what MLflow records."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launching import client, env, last_lines, launch, launch_cmd, metric

MAE = "configs/mnist012/mae.yaml"
pytestmark = pytest.mark.slow


def common(shards: Path, cwd: Path, name: str) -> list[str]:
    return [f"data.shards={shards}", f"run.output_dir={cwd}/{name}", f"run.tracking_uri=sqlite:///{cwd}/mlflow.db"]


def test_two_processes_match_one_process_with_the_same_global_batch(mnist012, tmp_path):
    base = common(mnist012, tmp_path, "x") + ["data.shuffle=false", "run.max_steps=4", "run.log_every=1",
                                              "optim.lr=1e-3"]
    one = launch("pretrain.py", MAE, base + ["data.batch_size=16", "run.output_dir=" + str(tmp_path / "one")],
                 tmp_path, nproc=1)
    assert "stopping at step 4 (run.max_steps)" in one.stdout  # the start line says when the run ends
    two = launch("pretrain.py", MAE, base + ["data.batch_size=8", "run.output_dir=" + str(tmp_path / "two")],
                 tmp_path, nproc=2)
    mlc = client(tmp_path)
    run_one, run_two = last_lines(one)["mlflow run id"], last_lines(two)["mlflow run id"]
    loss_one, loss_two = metric(mlc, run_one, "loss"), metric(mlc, run_two, "loss")
    assert len(loss_one) == len(loss_two) == 4
    assert loss_one[0] != loss_one[3]  # the model did change
    for a, b in zip(loss_one, loss_two, strict=True):
        assert abs(a - b) < 1e-5, (loss_one, loss_two)
    assert mlc.get_run(run_two).data.tags["world_size"] == "2"


def encoder_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(checkpoint) / "encoder.pt", weights_only=True)["state_dict"]


RESUME_ARGS = ["data.batch_size=8", "run.epochs=3", "run.checkpoint_every=5", "model.dropout=0.1", "run.log_every=5"]


@pytest.fixture(scope="module")
def uninterrupted(mnist012, tmp_path_factory) -> dict:
    """The run both interruptions are compared with (run once): its last checkpoint and epoch losses."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    full = launch("pretrain.py", MAE, common(mnist012, cwd, "full") + RESUME_ARGS, cwd)
    return {"checkpoint": last_lines(full)["checkpoint"],
            "epoch_loss": metric(client(cwd), last_lines(full)["mlflow run id"], "epoch_loss")}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_resume_after_interruption_matches_uninterrupted_run(mnist012, tmp_path, sig, uninterrupted):
    args = common(mnist012, tmp_path, "unused") + RESUME_ARGS
    full_ckpt = uninterrupted["checkpoint"]

    out_dir = tmp_path / "cut"
    proc = subprocess.Popen(launch_cmd("pretrain.py", MAE, args + [f"run.output_dir={out_dir}"]), cwd=tmp_path,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (out_dir / "checkpoint-00000010").exists():  # mid-epoch 1 of 3 (37 steps per epoch)
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    log = proc.communicate(timeout=120)[0]
    assert not (out_dir / Path(full_ckpt).name).exists(), "run ended before the cut"
    if sig == signal.SIGTERM:
        assert "stop requested: saving a checkpoint" in log

    resumed = launch("pretrain.py", MAE, args + [f"run.output_dir={out_dir}"], tmp_path)
    assert "resumed from" in resumed.stdout
    a, b = encoder_weights(full_ckpt), encoder_weights(last_lines(resumed)["checkpoint"])
    assert Path(last_lines(resumed)["checkpoint"]).name == Path(full_ckpt).name
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    mlc = client(tmp_path)
    run = mlc.get_run(last_lines(resumed)["mlflow run id"])
    assert run.info.status == "FINISHED"
    assert no_temp_folders(out_dir)
    # The metrics tell the truth after a resume: no step logged twice, and the interrupted epoch's
    # mean covers all its steps (its running sums travel in the checkpoint).
    for key in ("loss", "epoch_loss"):
        steps = [m.step for m in mlc.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    torch.testing.assert_close(metric(mlc, run.info.run_id, "epoch_loss"), uninterrupted["epoch_loss"], rtol=1e-6,
                               atol=0)


def no_temp_folders(root: Path) -> bool:
    return not list(root.glob(".tmp-*"))


def test_mlflow_run_records_params_metrics_artifacts_and_the_loss_falls(mnist012, tmp_path):
    out = launch("pretrain.py", MAE, common(mnist012, tmp_path, "mae") + ["run.epochs=6"], tmp_path)
    ids = last_lines(out)
    assert Path(ids["checkpoint"]).is_dir()
    mlc = client(tmp_path)
    run = mlc.get_run(ids["mlflow run id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["objective.name"] == "mae" and params["model.patch_size"] == "7"
    assert params["derived.global_batch"] == "32"
    for key in ("loss", "loss_mae", "images_per_s", "lr", "epoch_loss"):
        assert key in run.data.metrics, key
    for tag in ("mlflow.source.git.commit", "world_size", "precision", "device", "checkpoint"):
        assert tag in run.data.tags, tag
    artifacts = {a.path for a in mlc.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss_curve.png", "figures"} <= artifacts
    figures = [a.path for a in mlc.list_artifacts(run.info.run_id, "figures")]
    assert any(p.endswith("reconstruction.png") for p in figures)
    epoch_loss = metric(mlc, run.info.run_id, "epoch_loss")
    assert len(epoch_loss) == 6
    assert epoch_loss[-1] < 0.5 * epoch_loss[0], epoch_loss  # (d) the loss falls on the embedded subset


@pytest.mark.parametrize("style", ["mask_token", "zero"])
def test_other_styles_run_end_to_end(mnist012, tmp_path, style):
    out = launch("pretrain.py", MAE, common(mnist012, tmp_path, style) + [f"objective.style={style}",
                                                                          "run.epochs=2"], tmp_path)
    run = client(tmp_path).get_run(last_lines(out)["mlflow run id"])
    assert run.info.status == "FINISHED"
    assert metric(client(tmp_path), run.info.run_id, "epoch_loss")[-1] < metric(
        client(tmp_path), run.info.run_id, "epoch_loss")[0]


def test_logs_to_an_mlflow_server(mnist012, tmp_path):
    import mlflow

    from mlflow_server import mlflow_server

    with mlflow_server(tmp_path) as url:
        out = launch("pretrain.py", MAE, [f"data.shards={mnist012}", f"run.output_dir={tmp_path}/srv",
                                          f"run.tracking_uri={url}", "run.epochs=1"], tmp_path)
        mlc = mlflow.MlflowClient(tracking_uri=url)
        run = mlc.get_run(last_lines(out)["mlflow run id"])
        assert run.info.status == "FINISHED"
        assert "loss" in run.data.metrics
        assert "loss_curve.png" in {a.path for a in mlc.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default local store


def test_bf16_path_runs_on_cpu(mnist012, tmp_path):
    # bf16 has no CPU hardware support here (slow), so only a few steps: the path, not the speed.
    out = launch("pretrain.py", MAE, common(mnist012, tmp_path, "bf16") + ["run.precision=bf16", "run.max_steps=2"],
                 tmp_path)
    run = client(tmp_path).get_run(last_lines(out)["mlflow run id"])
    assert run.info.status == "FINISHED" and run.data.tags["precision"] == "bf16"
