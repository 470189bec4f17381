"""Video MAE: (e) tube masking hides the same places in every frame and random masking does not,
clips from images (repeat / moving), the L1 loss on masked tubelets, config checks, and (f) the
loss falls end to end."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from vitssl.config import PretrainConfig
from vitssl.config.load import ConfigError, build_config
from vitssl.data.clips import MovingClip, moving_clip, repeat_clip
from vitssl.models.masking import patchify, unpatchify_clip
from vitssl.objectives import build_objective, parse_options

from launching import client, last_lines, launch, metric

CONFIG = "configs/mnist012/video_mae.yaml"


def video_cfg(**objective) -> PretrainConfig:
    return build_config(PretrainConfig, {
        "data": {"image_size": 28, "channels": 1},
        "model": {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2, "frames": 4, "tubelet": 2},
        "objective": {"name": "video_mae", **objective}})


def batch_for(objective, n=6, seed=0):
    transform = objective.sample_transform()
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        torch.manual_seed(seed * 100 + i)
        samples.append(transform({"image": torch.rand(1, 28, 28, generator=g), "index": torch.tensor(i)}))
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def masks_per_slot(objective, batch) -> torch.Tensor:
    """(B, slots, spatial) mask, 1 = masked."""
    _, mask, _ = objective.mask(batch["mask_noise"])
    return mask.view(mask.shape[0], objective.slots, objective.spatial)


def test_tube_masking_hides_the_same_places_in_every_frame():
    obj = build_objective(video_cfg(masking="tube", mask_ratio=0.75))
    m = masks_per_slot(obj, batch_for(obj))
    assert obj.slots == 2 and obj.spatial == 16
    assert torch.equal(m[:, 0], m[:, 1])
    assert (m.sum(dim=2) == 12).all()  # 75% of 16 positions in each slot
    assert not torch.equal(m[0, 0], m[1, 0])  # but different places per sample


def test_random_masking_differs_across_frames():
    obj = build_objective(video_cfg(masking="random", mask_ratio=0.75))
    m = masks_per_slot(obj, batch_for(obj))
    assert (m.sum(dim=(1, 2)) == 24).all()
    assert any(not torch.equal(m[i, 0], m[i, 1]) for i in range(m.shape[0]))


def test_clips_from_images():
    image = torch.rand(1, 28, 28)
    rep = repeat_clip(image, 3)
    assert rep.shape == (1, 3, 28, 28) and all(torch.equal(rep[:, t], image) for t in range(3))
    assert repeat_clip(image[None].expand(5, -1, -1, -1), 3).shape == (5, 1, 3, 28, 28)
    moving = moving_clip(image, 3, (2.0, -1.0), 5.0)
    torch.testing.assert_close(moving[:, 1], image, atol=1e-5, rtol=0)  # the middle frame is the image
    assert not torch.allclose(moving[:, 0], image) and not torch.allclose(moving[:, 2], image)
    transform = MovingClip(3, "moving")
    torch.manual_seed(7)
    a = transform({"image": image})["clip"]
    torch.manual_seed(7)
    assert torch.equal(a, transform({"image": image})["clip"])  # seeded per sample by the loader


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 20)])
def test_moving_clip_is_torchvision_affine_frame_by_frame(shape):
    """The one-grid_sample clip equals torchvision's affine (rotate about the centre, translate,
    bilinear, zero fill) applied to each frame, also for non-square colour images and even T."""
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    velocity, spin = (1.7, -0.6), 8.0
    for frames in (2, 3, 4):
        mid = (frames - 1) / 2
        expected = torch.stack([TF.affine(image, angle=(k - mid) * spin, translate=[(k - mid) * v for v in velocity],
                                          scale=1.0, shear=[0.0, 0.0], interpolation=TF.InterpolationMode.BILINEAR)
                                for k in range(frames)], dim=1).clamp(0, 1)
        torch.testing.assert_close(moving_clip(image, frames, velocity, spin), expected, atol=1e-5, rtol=0)


def test_unpatchify_clip_inverts_patchify():
    clip = torch.rand(2, 3, 4, 14, 14)
    torch.testing.assert_close(unpatchify_clip(patchify(clip, 7, 2), 7, 2, 3, 4, 14), clip)


@pytest.mark.parametrize("loss_kind", ["l1", "l2"])
def test_loss_is_the_mean_error_over_masked_tubelets(loss_kind):
    obj = build_objective(video_cfg(loss=loss_kind, mask_ratio=0.5))
    batch = batch_for(obj)
    loss, metrics = obj(batch)
    _, mask, _ = obj.mask(batch["mask_noise"])
    pred = obj.mae.predict(batch["clip"], *obj.mask(batch["mask_noise"]))
    err = pred - patchify(batch["clip"], 7, 2)
    err = err.abs() if loss_kind == "l1" else err ** 2
    expected = err.mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in obj.parameters())
    assert metrics["loss_video_mae"] == loss.detach()
    assert "reconstruction_middle_frame.png" in obj.figures(batch)


def test_config_checks():
    with pytest.raises(ConfigError, match="frames > 1"):
        parse_options(build_config(PretrainConfig, {"objective": {"name": "video_mae"}}))
    with pytest.raises(ConfigError, match="use video_mae"):
        parse_options(build_config(PretrainConfig, {"model": {"frames": 3}, "objective": {"name": "mae"}}))
    with pytest.raises(ConfigError, match="objective.masking"):
        parse_options(video_cfg(masking="checkerboard"))


@pytest.mark.slow
def test_video_mae_loss_falls(mnist012, tmp_path):
    out = launch("pretrain.py", CONFIG, [f"data.shards={mnist012}", f"run.output_dir={tmp_path}/run",
                                         f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "run.epochs=3",
                                         "optim.warmup_epochs=1", "optim.lr=2e-3"], tmp_path)
    mlc = client(tmp_path)
    run_id = last_lines(out)["mlflow run id"]
    assert mlc.get_run(run_id).info.status == "FINISHED"
    losses = metric(mlc, run_id, "epoch_loss")
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    artifacts = [a.path for a in mlc.list_artifacts(run_id, "figures")]
    assert any("reconstruction_middle_frame" in a for a in artifacts), artifacts
