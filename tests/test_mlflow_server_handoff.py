"""The encoder travels through a real `mlflow server` that proxies artifacts: the client needs only the
URL, and a server that goes away while a fine-tune downloads is one error naming the URI."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch

from vitssl.models import encoder_export, make_encoder
from vitssl.tracking.encoder_model import log_encoder
from vitssl.tracking.handoff import HandoffError, fetch_encoder

from launching import ROOT, last_lines, launch
from mlflow_server import mlflow_server

pytestmark = pytest.mark.slow  # starts a server process


def test_encoder_round_trips_through_a_proxying_server_and_an_outage_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes, once it is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    export = encoder_export(make_encoder("cnn")) | {"objective": "simclr"}
    with mlflow_server(tmp_path / "server") as url:
        client = mlflow.MlflowClient(url)
        run = client.create_run(client.create_experiment("server-handoff"))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploads go through the server
        logged = log_encoder(url, run.info.run_id, export, step=1, register_as="server-encoder")
        stored = list((tmp_path / "server" / "artifacts").rglob("encoder.pt"))
        assert len(stored) == 1  # in the server's artifact folder, nowhere on the client's side
        for spec in (f"runs:/{run.info.run_id}", "models:/server-encoder/1", logged.model_uri):
            got = fetch_encoder(spec, url)
            assert got.model_id == logged.model_id, spec
            assert all(torch.equal(got.export["state_dict"][k], v) for k, v in export["state_dict"].items()), spec
    monkeypatch.chdir(tmp_path)
    before = set(Path(tempfile.gettempdir()).glob("vitssl-pretrained-*"))
    spec = f"runs:/{run.info.run_id}"
    with pytest.raises(HandoffError) as err:
        fetch_encoder(spec, url)
    assert spec in str(err.value) and url in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert set(Path(tempfile.gettempdir()).glob("vitssl-pretrained-*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server"]


def test_pretrain_here_fine_tune_elsewhere_through_the_server_alone(mnist012, tmp_path):
    """Pretrain in folder A, delete A, fine-tune in folder B by runs:/ and models:/ URIs: the same result
    as the local-path handoff on the same seed, and the runs carry the lineage."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    with mlflow_server(tmp_path / "server") as url:
        common = [f"data.shards={mnist012}", f"run.tracking_uri={url}", "run.experiment=cross-machine"]
        pre = launch("pretrain.py", "configs/mnist012/mae.yaml", common + [
            "run.epochs=1", "run.max_steps=3", "data.batch_size=16", "model.depth=2", "run.register_as=xm-mae",
            f"run.output_dir={a / 'mae'}"], a)
        ids = last_lines(pre)
        pre_id = ids["mlflow run id"]

        def fine_tune(spec: str, cwd: Path, name: str) -> tuple[str, dict]:
            out = launch("finetune.py", "configs/mnist012/finetune.yaml", common + [
                f"finetune.pretrained={spec}", "finetune.mode=finetune", "run.epochs=1", "run.max_steps=3",
                "finetune.tsne=false", f"run.output_dir={cwd / name}"], cwd)
            run_id = out.stdout.strip().splitlines()[-1].split(": ")[1]
            metrics = json.loads((cwd / name / "eval_metrics.json").read_text())
            return run_id, {k: v for k, v in metrics.items() if not k.endswith("_time_s")}

        local_id, local = fine_tune(ids["checkpoint"], a, "local")
        shutil.rmtree(a)
        by_run_id, by_run = fine_tune(f"runs:/{pre_id}", b, "by-run")
        by_model_id, by_model = fine_tune("models:/xm-mae/1", b, "by-model")
        assert by_run == local and by_model == local  # accuracy, errors and the whole confusion matrix
        assert 0 < local["test_accuracy"] <= 1

        mlc = mlflow.MlflowClient(url)
        run = mlc.get_run(pre_id)
        model_id = run.outputs.model_outputs[0].model_id
        assert mlc.get_logged_model(model_id).name == run.info.run_name
        assert mlc.get_model_version("xm-mae", "1").source == f"models:/{model_id}"
        manifest = json.loads((mnist012 / "manifest.json").read_text())
        digests = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs}
        for context, split in (("training", "train"), ("evaluation", "test")):
            shards = manifest["splits"][split]["shards"]
            sha = hashlib.sha256("".join(f"{s['name']} {s['sha256']}\n" for s in shards).encode()).hexdigest()
            assert digests[context] == sha[:16], context
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        assert run.data.tags["mlflow.source.git.commit"] == head
        assert run.data.params["accelerate.num_processes"] == "1"
        for ft_id, uri in ((by_run_id, f"runs:/{pre_id}/encoder"), (by_model_id, "models:/xm-mae/1")):
            ft = mlc.get_run(ft_id)
            assert ft.data.tags["vitssl.pretrained_uri"] == uri
            assert ft.data.tags["vitssl.pretrain_run_id"] == ft.data.tags["mlflow.parentRunId"] == pre_id
            assert [m.model_id for m in ft.inputs.model_inputs] == [model_id]
        assert mlc.get_run(local_id).data.tags["vitssl.pretrain_run_id"] == pre_id
