"""Crops and resizing on read: mixed-size photo shards in, one size out, seeded per sample; reduced-scale
JPEG decoding; uint8 batches made float on the device."""

from __future__ import annotations

import random

import pytest
import torch

from vitssl.data import DataConfig, DataError, EvalLoader, TrainLoader, make_train_loader
from vitssl.data.crops import center_box, random_resized_box
from vitssl.engine.batches import DeviceFeed

from photos import write_photo_shards

SIZES = [(96, 72), (72, 96), (130, 100), (64, 64)]  # mixed sizes and aspect ratios
CROP = dict(image_size=32, channels=3, crop="random_resized", crop_scale=(0.2, 1.0))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_shards(tmp_path_factory.mktemp("photos") / "p", {"train": 48, "test": 10}, SIZES,
                              shard_max_count=12)


def by_index(batches) -> dict[int, torch.Tensor]:
    return {int(i): image for b in batches for i, image in zip(b["index"], b["image"], strict=True)}


def test_mixed_sizes_need_a_crop_and_say_so(photos):
    with pytest.raises(DataError, match="data.crop=random_resized"):
        list(make_train_loader(photos, batch_size=8, rank=0, world_size=1, channels=3))


def test_random_resized_crops_are_one_size_and_the_same_on_any_split_of_the_work(photos):
    single = list(make_train_loader(photos, batch_size=16, rank=0, world_size=1, epoch=1, **CROP))
    assert {tuple(b["image"].shape) for b in single} == {(16, 3, 32, 32)}
    split = [b for r in range(2) for b in make_train_loader(photos, batch_size=8, rank=r, world_size=2, epoch=1,
                                                             num_workers=2, **CROP)]
    one, two = by_index(single), by_index(split)
    assert one.keys() == two.keys() and len(one) == 48
    assert all(torch.equal(one[i], two[i]) for i in one)  # bitwise: geometry and flip seeded per sample
    other_epoch = by_index(make_train_loader(photos, batch_size=16, rank=0, world_size=1, epoch=2, **CROP))
    assert sum(not torch.equal(one[i], other_epoch[i]) for i in one) > 40  # new crops every epoch


def test_reduced_scale_decoding_keeps_the_crop(photos):
    common = dict(batch_size=16, rank=0, world_size=1, shuffle=False, image_size=16, channels=3, crop="center")
    full = by_index(make_train_loader(photos, reduced_decode=False, **common))
    reduced = by_index(make_train_loader(photos, reduced_decode=True, **common))
    # every centre crop here is at least 56 px, over twice the 16 px output: all are decoded at reduced scale
    diffs = torch.stack([(full[i] - reduced[i]).abs().mean() for i in full])
    assert diffs.max() < 0.05  # the same region, at a different decode resolution
    assert diffs.max() > 0  # and not the full-size decode


def test_evaluation_resizes_and_centre_crops_deterministically(photos):
    data = DataConfig(shards=str(photos), **CROP)
    first, again = (torch.cat([b["image"] for b in EvalLoader(data, batch_size=4)]) for _ in range(2))
    assert first.shape == (10, 3, 32, 32) and first.dtype == torch.float32 and torch.equal(first, again)


def test_uint8_batches_become_the_float_batches_on_the_device(photos):
    data = DataConfig(shards=str(photos), batch_size=8, num_workers=2, **CROP)
    floats = list(TrainLoader(data, epoch=3))
    raw = list(TrainLoader(data, epoch=3, float_pixels=False))
    assert raw[0]["image"].dtype == torch.uint8
    fed = list(DeviceFeed(raw, torch.device("cpu"), torch.float32))
    assert len(fed) == len(floats)
    for a, b in zip(fed, floats, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])


def test_crop_boxes():
    rng = random.Random(0)
    for _ in range(200):
        h, w = rng.randint(20, 400), rng.randint(20, 400)
        top, left, ch, cw = random_resized_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    assert center_box(375, 500, 224, 0.875) == (23, 86, 328, 328)  # 87.5% of the shorter side, centred
    assert random_resized_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), rng)[2:] == (10, 13)  # fallback: ratio clamp


def test_a_bad_crop_setting_is_one_error_naming_the_key():
    from vitssl.config import ConfigError, PretrainConfig, load_config

    with pytest.raises(ConfigError, match=r"data.crop_scale: must satisfy 0 < low <= high <= 1"):
        load_config(PretrainConfig, None, ["data.crop_scale=[0.5,0.2]"])
    with pytest.raises(ConfigError, match="data.crop: Input should be 'none', 'random_resized' or 'center'"):
        load_config(PretrainConfig, None, ["data.crop=random"])
