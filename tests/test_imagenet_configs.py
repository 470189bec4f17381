"""configs/imagenet: each MAE pretraining and fine-tuning config runs a few steps on mixed-size photo
shards (model and image size shrunk by overrides); CutMix weights the labels by the pasted area."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitssl.config import PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.objectives.mixup import cutmix

from photos import write_photo_shards

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(120, 90), (90, 120), (160, 120), (64, 64)]
SMALL = ["data.image_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
         "data.batch_size=8", "run.grad_accum=2", "run.max_steps=2", "run.epochs=1", "run.log_every=1",
         "run.precision=no", "run.compile=false", "data.num_workers=1", "data.shuffle_buffer=16"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_shards(tmp_path_factory.mktemp("imagenet") / "photos", {"train": 48, "test": 12}, SIZES,
                              shard_max_count=16)


def overrides(photos: Path, out: Path, name: str) -> list[str]:
    return [f"data.shards={photos}", f"run.output_dir={out / name}", f"run.tracking_uri=sqlite:///{out}/mlflow.db",
            *SMALL]


def pretrain_config(size: str, photos: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, ROOT / f"configs/imagenet/mae_vit_{size}.yaml",
                       overrides(photos, out, "mae") + ["objective.decoder_dim=32", "objective.decoder_depth=1",
                                                        "objective.decoder_heads=2", *extra])


def finetune_config(size: str, photos: Path, out: Path, *extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, ROOT / f"configs/imagenet/finetune_vit_{size}.yaml",
                       overrides(photos, out, "ft") + ["finetune.num_classes=3", *extra])


@pytest.mark.slow
def test_vit_b16_mae_then_its_finetune_run_on_mixed_size_photos(photos, tmp_path):
    from vitssl.engine.finetune import run_finetune
    from vitssl.engine.pretrain import run_pretrain

    cfg = pretrain_config("b16", photos, tmp_path)
    assert cfg.data.crop == "random_resized" and cfg.optim.betas == (0.9, 0.95) and cfg.objective["norm_pix_loss"]
    pretrained = run_pretrain(cfg)
    losses = [v for _, v in pretrained.state.history["loss"]]
    assert pretrained.state.step == 2 and len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))

    ft = finetune_config("b16", photos, tmp_path, f"finetune.pretrained={tmp_path / 'mae'}")
    assert ft.finetune.cutmix_alpha == 1.0 and ft.finetune.mixup_alpha == 0.8 and ft.data.crop_scale == (0.08, 1.0)
    result = run_finetune(ft)
    assert result.metrics["test_n"] == 12  # every test photo, resized and centre-cropped


@pytest.mark.slow
@pytest.mark.parametrize("size", ["s16", "ti16"])
def test_vit_s16_and_ti16_mae_run_and_their_finetunes_load(photos, tmp_path, size):
    """The same recipe as ViT-B/16 with another encoder: one pretraining step each (the fine-tune run is
    the ViT-B/16 test's; its config is only validated here)."""
    from vitssl.engine.pretrain import run_pretrain

    result = run_pretrain(pretrain_config(size, photos, tmp_path, "run.max_steps=1", "data.num_workers=0"))
    assert result.state.step == 1 and torch.isfinite(torch.tensor(result.state.history["loss"][0][1]))
    assert finetune_config(size, photos, tmp_path).finetune.layer_decay == 0.75


def test_cutmix_labels_follow_the_pasted_area():
    torch.manual_seed(3)
    images, labels = torch.zeros(4, 1, 20, 20), torch.arange(4)
    images += labels.view(4, 1, 1, 1).float()  # image i is all i
    mixed, targets, lam = cutmix(images, labels, 4, alpha=1.0)
    for i in range(4):
        kept = (mixed[i] == i).float().mean()
        assert torch.isclose(targets[i, i], kept) or targets[i].max() == 1  # own share = pixels kept
        torch.testing.assert_close(targets[i].sum(), torch.tensor(1.0))
    assert 0 < lam <= 1
