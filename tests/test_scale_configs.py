"""The full-MNIST and Tiny-ImageNet configs run a few steps on tiny stand-in datasets.

In this process: what is under test is the configs; the entry points under `accelerate launch` are
tested elsewhere (test_pretrain_runs.py, test_finetune.py), and a launch costs ~10 s of start-up."""
from pathlib import Path

import pytest

from vitssl.config import PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.finetune import run_finetune
from vitssl.engine.pretrain import run_pretrain

from fixtures import make_mnist_shards, tiny_imagenet_files, write_idx_dir, write_tiny_zip
from launching import ROOT, client

pytestmark = pytest.mark.slow
FEW_STEPS = ["run.max_steps=2", "run.log_every=1"]


def run_few_steps(config: str, shards: Path, tmp_path: Path, *extra: str) -> None:
    cfg = load_config(PretrainConfig, ROOT / config, [f"data.shards={shards}", f"run.output_dir={tmp_path}/run",
                                                      f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                                      *FEW_STEPS, *extra])
    run = client(tmp_path).get_run(run_pretrain(cfg).state.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["loss"] > 0


@pytest.fixture(scope="module")
def fake_full_mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_idx_dir(root / "idx", train_per_class=10, test_per_class=2, gz=True)
    return make_mnist_shards(root / "shards", "--source", f"idx:{root / 'idx'}", "--digits", "0-9",
                             "--per-class", "all")


@pytest.fixture(scope="module")
def fake_tiny_imagenet(tmp_path_factory) -> Path:
    from data_prep.cli import run

    root = tmp_path_factory.mktemp("tiny")
    zipped = write_tiny_zip(root / "tiny-imagenet-200.zip", tiny_imagenet_files(train_per_class=8, val_total=9))
    run(["tiny-imagenet", "--source", str(zipped), "--out", str(root / "shards")])
    return root / "shards"


@pytest.mark.parametrize("config", ["configs/mnist/mae.yaml", "configs/mnist/infonce.yaml",
                                    "configs/mnist/mae_infonce.yaml", "configs/mnist/video_mae.yaml"])
def test_full_mnist_configs(config, fake_full_mnist, tmp_path):
    run_few_steps(config, fake_full_mnist, tmp_path, "data.batch_size=16", "data.num_workers=2")


@pytest.mark.parametrize("config", ["configs/tiny_imagenet/mae_drop.yaml", "configs/tiny_imagenet/mae_mask_token.yaml",
                                    "configs/tiny_imagenet/infonce.yaml"])
def test_tiny_imagenet_configs(config, fake_tiny_imagenet, tmp_path):
    run_few_steps(config, fake_tiny_imagenet, tmp_path, "data.batch_size=4", "data.num_workers=0")


@pytest.mark.parametrize("mode", ["finetune", "linear"])
def test_tiny_imagenet_evaluation_configs(mode, fake_tiny_imagenet, tmp_path):
    cfg = load_config(FinetuneConfig, ROOT / f"configs/tiny_imagenet/{mode}.yaml",
                      [f"data.shards={fake_tiny_imagenet}", "data.batch_size=4", "data.num_workers=0", "model.depth=2",
                       "finetune.num_classes=3", "run.epochs=1", f"run.output_dir={tmp_path}/ft",
                       f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    run = client(tmp_path).get_run(run_finetune(cfg).run_id)
    assert run.info.status == "FINISHED"
    assert 0 <= run.data.metrics["test_accuracy"] <= 1
