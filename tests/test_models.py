"""Every model builds and does a forward/backward; blocks match their formulas."""
import math
from pathlib import Path

import pytest
import torch

from vitssl.models import ViT, ViTOptions
from vitssl.models.layers import Attention, sincos_pos_embed
from vitssl.models.masking import mask_from_noise, patchify, unpatchify

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("options, x_shape, tokens", [
    (ViTOptions(), (2, 1, 28, 28), 16),
    (ViTOptions(patch_size=8, embed_dim=96, num_heads=3), (2, 3, 64, 64), 64),
    (ViTOptions(frames=3, tubelet=1, pos_embed="learned"), (2, 1, 3, 28, 28), 48),
    (ViTOptions(cls_token=False), (2, 1, 28, 28), 16),
])
def test_vit_forward_backward(options, x_shape, tokens):
    model = ViT(options, image_size=x_shape[-1], channels=x_shape[1])
    assert model.input_shape == x_shape[1:]
    x = torch.rand(x_shape)
    feats = model.forward_features(x)
    assert feats.shape == (2, tokens + int(options.cls_token), options.embed_dim)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_encoder_can_encode_a_subset_of_tokens():
    model = ViT()
    tokens = model.embed(torch.rand(3, 1, 28, 28))
    assert model.encode(tokens[:, :4]).shape == (3, 5, 64)


def test_attention_matches_softmax_formula():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_sincos_is_fixed_distinct_and_bounded():
    emb = sincos_pos_embed(64, (1, 4, 4))
    assert emb.shape == (16, 64)
    assert emb.abs().max() <= 1
    assert torch.cdist(emb, emb).fill_diagonal_(1).min() > 0.1  # every position distinct


def test_patchify_roundtrip_and_token_order():
    x = torch.rand(2, 3, 28, 28)
    patches = patchify(x, 7)
    assert patches.shape == (2, 16, 147)
    torch.testing.assert_close(unpatchify(patches, 7, 3, 28), x)
    # patch 1 is the second patch of the first row, as PatchEmbed orders tokens
    torch.testing.assert_close(patches[:, 1].reshape(2, 7, 7, 3).permute(0, 3, 1, 2), x[:, :, :7, 7:14])


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_mask_has_exact_count_per_sample(ratio):
    noise = torch.rand(5, 16)
    ids_keep, mask, ids_restore = mask_from_noise(noise, ratio)
    visible = round(16 * (1 - ratio))
    assert ids_keep.shape == (5, visible)
    assert (mask.sum(dim=1) == 16 - visible).all()
    assert (torch.gather(mask, 1, ids_keep) == 0).all()


def test_drop_path_rises_over_the_blocks_drops_per_sample_in_training_only():
    torch.manual_seed(0)
    vit = ViT(ViTOptions(depth=4))
    x = torch.randn(1, 1, 28, 28).expand(64, -1, -1, -1)  # one image, 64 times
    vit.eval()
    plain = vit.forward_features(x)
    vit.set_drop_path(0.3)
    assert [b.drop_path.p for b in vit.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    torch.testing.assert_close(vit.forward_features(x), plain, rtol=0, atol=0)  # eval: nothing dropped
    vit.train()
    out = vit.forward_features(x)
    # each sample keeps or drops each residual branch on its own: identical inputs part ways
    assert len(torch.unique(out[:, 0].round(decimals=4), dim=0)) > 8
    vit.set_drop_path(0.0)
    assert len(torch.unique(vit.forward_features(x)[:, 0].round(decimals=4), dim=0)) == 1


def test_drop_path_on_an_encoder_without_blocks_is_a_clear_error():
    from vitssl.config import load_config
    from vitssl.config.finetune import FinetuneConfig
    from vitssl.config.load import ConfigError

    with pytest.raises(ConfigError, match="finetune.drop_path needs an encoder with residual blocks to drop; "
                                        "model.arch cnn has none"):  # model={...}: a new model section
        load_config(FinetuneConfig, ROOT / "configs/mnist012/finetune.yaml", ["model={arch: cnn}", "finetune.drop_path=0.1"])
