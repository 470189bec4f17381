"""The baseline systems end to end on the embedded MNIST 0/1/2 subset: the CNN baselines'
losses fall and their linear probes rebuild the CNN from the checkpoint, the Swin student learns
from the teacher alone (labels shuffled: the identical run), supervised ViT with RandAugment +
Mixup, and a sweep whose runs compare ranks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vitssl.data
from vitssl.config import load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine import finetune as engine
from vitssl.engine.finetune import run_finetune
from vitssl.eval.compare import compare
from vitssl.models import CNN, ViT, ViTOptions, encoder_export

from launching import ROOT, client, env, last_lines, launch, metric

pytestmark = pytest.mark.slow  # every test trains


def finetune_config(name: str, shards: Path, out: Path, uri: str, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, ROOT / f"configs/mnist012/{name}.yaml",
                       [f"data.shards={shards}", f"run.output_dir={out}", f"run.tracking_uri={uri}",
                        "run.experiment=systems", "finetune.tsne=false", *overrides])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A classifier checkpoint as fine-tuning writes it: encoder export + head + config."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    encoder = ViT(ViTOptions(depth=1, embed_dim=32, num_heads=2))
    export = encoder_export(encoder) | {"head": nn.Linear(32, 3).state_dict(), "objective": "classify",
                                        "config": {"finetune": {"pool": "cls"}}}
    torch.save(export, folder / "encoder.pt")
    return folder


class WrongLabels:
    """A train loader whose every label is replaced by the next class: (y + 1) mod 3. Draws no random numbers."""

    def __init__(self, loader):
        self.loader, self.batches = loader, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch

    def __iter__(self):
        for batch in self.loader:
            self.batches += 1
            yield batch | {"label": (batch["label"] + 1) % 3}


def test_swin_student_training_does_not_depend_on_labels(mnist012, teacher, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = ["run.epochs=1", "run.max_steps=4", "run.log_every=1", "data.batch_size=16", "model.embed_dim=24",
             f"finetune.teacher={teacher}"]
    true = run_finetune(finetune_config("swin_distill", mnist012, tmp_path / "true", uri, *small))
    wrapped = []
    real_loader = vitssl.data.TrainLoader  # what the training plan (engine.plan) reads at call time
    monkeypatch.setattr(vitssl.data, "TrainLoader",
                        lambda *a, **k: wrapped.append(WrongLabels(real_loader(*a, **k))) or wrapped[-1])
    wrong = run_finetune(finetune_config("swin_distill", mnist012, tmp_path / "wrong", uri, *small))
    assert sum(w.batches for w in wrapped) >= 4  # the wrong labels did reach training

    mlc = client(tmp_path)
    losses = [metric(mlc, r.run_id, "loss") for r in (true, wrong)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    weights = [torch.load(r.checkpoint / "encoder.pt", weights_only=True) for r in (true, wrong)]
    assert weights[0]["arch"] == "swin"
    for part in ("state_dict", "head"):
        for k, v in weights[0][part].items():
            assert torch.equal(v, weights[1][part][k]), k
    tags = mlc.get_run(true.run_id).data.tags
    assert tags["vitssl.objective"] == "distill" and tags["vitssl.teacher"] == str(teacher)


def test_supervised_vit_with_randaugment_and_mixup(mnist012, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_finetune(finetune_config("supervised_vit", mnist012, tmp_path / "vit", uri, "run.epochs=3"))
    run = client(tmp_path).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["finetune.mixup_alpha"] == "0.2"
    assert run.data.params["model.depth"] == "2" and run.data.params["finetune.randaugment"] == "True"
    assert result.metrics["test_accuracy"] > 0.5  # well above chance after 3 epochs
    assert {"eval/confusion_matrix.png", "eval/confusion_matrix.json"} <= {
        a.path for a in client(tmp_path).list_artifacts(result.run_id, "eval")}


def test_cnn_baselines_learn_and_their_linear_probes_rebuild_the_cnn(mnist012, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = client(tmp_path)
    built = []
    real = engine.build_encoder
    monkeypatch.setattr(engine, "build_encoder", lambda *a: built.append(real(*a)) or built[-1])
    for name in ("cnn_autoencoder", "rotation", "simclr"):
        out = launch("pretrain.py", f"configs/mnist012/{name}.yaml",
                     [f"data.shards={mnist012}", f"run.output_dir={tmp_path / name}", "run.epochs=3",
                      "run.log_every=3", "run.experiment=systems"], tmp_path)
        run_id = last_lines(out)["mlflow run id"]
        losses = metric(mlc, run_id, "epoch_loss")
        assert mlc.get_run(run_id).info.status == "FINISHED"
        assert losses[-1] < losses[0], (name, losses)
        probe = finetune_config("finetune", mnist012, tmp_path / f"{name}-linear", uri, "finetune.mode=linear",
                                "finetune.linear_steps=100", f"finetune.pretrained={tmp_path / name}")
        result = run_finetune(probe)
        assert isinstance(built[-1], CNN) and result.metrics["test_accuracy"] > 0.6, name
        assert "test_accuracy_class_2" in result.metrics
    table = compare("systems", uri)
    for name in ("cnn_autoencoder", "rotation", "simclr"):
        assert f"| {name} |" in table


def test_sweep_runs_every_combination_and_compare_ranks_them(mnist012, tmp_path):
    cmd = [sys.executable, str(ROOT / "launch/sweep.py"), "--config", str(ROOT / "configs/mnist012/supervised_vit.yaml"),
           "--grid", "optim.lr=1e-3,3e-3", "--out", str(tmp_path / "sweep"),
           "--set", f"data.shards={mnist012}", "run.epochs=2", "run.experiment=sweep", "finetune.tsne=false"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    table = compare("sweep", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rows = [line for line in table.splitlines() if line.startswith("| none (scratch) [")]
    assert len(rows) == 2 and {"[lr=1e-3]", "[lr=3e-3]"} == {r.split(" ")[3] for r in rows}
    accuracies = [float(r.split("|")[3].split()[0]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # ranked best first
