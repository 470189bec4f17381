"""(c) MAE: loss only on masked patches, styles, figures."""
import pytest
import torch

from vitssl.config import ConfigError, PretrainConfig
from vitssl.models.masking import mask_from_noise, patchify
from vitssl.objectives import build_objective
from vitssl.objectives.mae import MaskNoise


def build(**options):
    cfg = PretrainConfig.model_validate({"objective": {"name": "mae", **options}})
    return build_objective(cfg)


def test_loss_ignores_visible_patch_predictions():
    torch.manual_seed(0)
    mae = build(mask_ratio=0.5)
    x = torch.rand(4, 1, 28, 28)
    _, mask, _ = mask_from_noise(torch.rand(4, 16), 0.5)
    pred = torch.rand(4, 16, 49)
    base = mae.loss(pred, x, mask)
    changed_visible = pred + (1 - mask)[..., None] * 5.0
    assert mae.loss(changed_visible, x, mask) == base
    changed_masked = pred + mask[..., None] * 5.0
    assert mae.loss(changed_masked, x, mask) != base


def test_loss_is_mse_over_masked_patches():
    mae = build(mask_ratio=0.75)
    x = torch.rand(2, 1, 28, 28)
    _, mask, _ = mask_from_noise(torch.rand(2, 16), 0.75)
    pred = torch.rand(2, 16, 49)
    target = patchify(x, 7)
    expected = ((pred - target) ** 2)[mask.bool()].mean()
    torch.testing.assert_close(mae.loss(pred, x, mask), expected)


def test_norm_pix_loss_normalises_each_patch_target():
    mae = build(norm_pix_loss=True)
    x = torch.rand(2, 1, 28, 28)
    mask = torch.ones(2, 16)
    target = patchify(x, 7)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    torch.testing.assert_close(mae.loss(normed, x, mask), torch.tensor(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("style", ["drop", "mask_token", "zero"])
def test_each_style_trains_on_a_fixed_batch(style):
    torch.manual_seed(0)
    mae = build(style=style, mask_ratio=0.5)
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 4:24, 12:16] = 1.0  # a stroke: learnable structure
    noise = MaskNoise(16)
    batch = {"image": x, "mask_noise": torch.stack([noise({})["mask_noise"] for _ in range(8)])}
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, metrics = mae(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    assert set(metrics) == {"loss_mae"}
    assert all(p.grad is not None for p in mae.parameters()), "DDP needs every parameter used"


@pytest.mark.parametrize("style", ["drop", "mask_token", "zero"])
def test_reconstruction_loss_reaches_the_cls_output(style):
    """The decoder attends to the encoder's CLS output, as in MAE's reference; otherwise the token
    a linear probe reads is never trained by the pretext loss."""
    mae = build(style=style)
    outputs = []

    def keep(module, inputs, output):
        output.retain_grad()
        outputs.append(output)

    mae.encoder.norm.register_forward_hook(keep)
    loss, _ = mae({"image": torch.rand(2, 1, 28, 28)})
    loss.backward()
    assert outputs[0].grad[:, 0].abs().sum() > 0


def test_drop_style_encoder_sees_only_visible_tokens():
    mae = build(style="drop", mask_ratio=0.75)
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    mae({"image": torch.rand(3, 1, 28, 28)})
    assert seen == [torch.Size([3, 1 + 4, 64])]  # CLS + 4 visible of 16


def test_reconstruction_figure():
    mae = build()
    figs = mae.figures({"image": torch.rand(4, 1, 28, 28)})
    assert list(figs) == ["reconstruction.png"]


def test_augment_moves_the_digit_before_masking():
    """objective.augment: the sample transform applies a random affine, then draws mask noise;
    off (the default), the image passes through untouched."""
    image = torch.zeros(1, 28, 28)
    image[:, 10:18, 12:16] = 1.0
    plain = build().sample_transform()({"image": image.clone()})
    assert torch.equal(plain["image"], image) and plain["mask_noise"].shape == (16,)
    moved = build(augment=True, augment_degrees=30.0).sample_transform()
    torch.manual_seed(0)
    out = moved({"image": image.clone()})
    assert not torch.equal(out["image"], image) and out["mask_noise"].shape == (16,)
    assert out["image"].shape == image.shape and 0 <= out["image"].min() and out["image"].max() <= 1


def test_augment_scale_is_checked_with_its_key():
    with pytest.raises(ConfigError, match=r"objective\.augment_scale"):
        build(augment_scale=[1.2, 0.9])
