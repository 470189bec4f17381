"""vitssl.data readers: checksums, exact rank/worker splits, resume, reproducibility, eval exactness."""

from __future__ import annotations

import json

import pytest
import torch

from vitssl.data import DataError, load_manifest, load_split_tensors, make_eval_loader, make_train_loader
from vitssl.data import shards as shards_module

from fixtures import make_mnist_shards

N_TRAIN = 96  # 3 classes x 32; divisible by the global batch 2 ranks x 8


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """8 train shards of 12: each stream covers one or two shards."""
    return make_mnist_shards(tmp_path_factory.mktemp("many"), "--train-per-class", "32", "--test-per-class", "7",
                             "--shard-max-count", "12")


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    """A single train shard: every stream is a range of it."""
    return make_mnist_shards(tmp_path_factory.mktemp("one"), "--train-per-class", "32", "--test-per-class", "7")


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    """90 train samples in shards of 12 and one of 6: a global batch does not divide them."""
    return make_mnist_shards(tmp_path_factory.mktemp("uneven"), "--train-per-class", "30", "--test-per-class", "5",
                             "--shard-max-count", "12")


def indices(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def add_noise(sample: dict) -> dict:
    """A random augmentation; module-level so DataLoader workers can run it."""
    return {**sample, "noise": torch.rand(4)}


def run_ranks(shard_dir, world_size: int, **kwargs) -> list[list[dict]]:
    return [list(make_train_loader(shard_dir, rank=r, world_size=world_size, **kwargs)) for r in range(world_size)]


# ---------------------------------------------------------------- manifest checks


def test_missing_manifest_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="python -m data_prep mnist --out"):
        load_manifest(tmp_path)


def test_corrupt_shard_is_rejected(tmp_path):
    out = make_mnist_shards(tmp_path / "d", "--per-class", "10")
    shard = out / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-000000.tar is corrupt.*re-run"):
        make_train_loader(out, batch_size=4, rank=0, world_size=1)
    make_train_loader(out, batch_size=4, rank=0, world_size=1, check_sha=False)  # explicit opt-out
    shard.unlink()
    with pytest.raises(DataError, match="train-000000.tar is missing"):
        make_eval_loader(out, "train", batch_size=4, check_sha=False)


def test_count_mismatch_is_rejected(tmp_path):
    out = make_mnist_shards(tmp_path / "d", "--per-class", "10")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["test"]["shards"][0]["count"] = 31
    manifest["splits"]["test"]["count"] = 31
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="test-000000.tar holds a different number of samples"):
        make_eval_loader(out, batch_size=4)


def test_batch_larger_than_split_is_an_error(one_shard):
    with pytest.raises(DataError, match="global batch 128 .* exceeds"):
        make_train_loader(one_shard, batch_size=64, rank=0, world_size=2)


# ---------------------------------------------------------------- training splits


@pytest.mark.parametrize("fixture", ["many_shards", "one_shard"])
def test_two_ranks_two_workers_see_every_sample_once(request, fixture):
    shard_dir = request.getfixturevalue(fixture)
    loaders = [make_train_loader(shard_dir, batch_size=8, rank=r, world_size=2, num_workers=2, epoch=3)
               for r in range(2)]
    assert [loader.steps_per_epoch for loader in loaders] == [N_TRAIN // 16] * 2
    ranks = [list(loader) for loader in loaders]
    assert [len(batches) for batches in ranks] == [N_TRAIN // 16] * 2
    seen = [i for batches in ranks for b in indices(batches) for i in b]
    assert sorted(seen) == list(range(N_TRAIN))
    batch = ranks[0][0]
    assert batch["image"].shape == (8, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == batch["index"].dtype == torch.int64


def test_uneven_shards_give_every_rank_the_same_number_of_batches(uneven_shards):
    # 90 samples, global batch 24: 3 full global batches, 18 samples left out, none twice
    ranks = run_ranks(uneven_shards, 3, batch_size=8, epoch=1)
    assert [len(r) for r in ranks] == [3, 3, 3]
    seen = [i for batches in ranks for b in indices(batches) for i in b]
    assert len(seen) == len(set(seen)) == 72


@pytest.mark.parametrize("fixture, shuffle", [("one_shard", False), ("many_shards", True)])
def test_ranks_together_equal_one_rank_with_the_global_batch(request, fixture, shuffle):
    shard_dir = request.getfixturevalue(fixture)
    common = dict(shuffle=shuffle, epoch=2)
    single = indices(make_train_loader(shard_dir, batch_size=16, rank=0, world_size=1, **common))
    accum = indices(make_train_loader(shard_dir, batch_size=8, rank=0, world_size=1, grad_accum=2, **common))
    ranks = [indices(batches) for batches in run_ranks(shard_dir, 2, batch_size=8, num_workers=1, **common)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == len(accum) // 2 == N_TRAIN // 16
    for k, batch in enumerate(single):
        assert batch == ranks[0][k] + ranks[1][k] == accum[2 * k] + accum[2 * k + 1]


@pytest.mark.parametrize("fixture, world_size, num_workers, skip",
                         [("many_shards", 2, 0, 4), ("many_shards", 2, 2, 4), ("uneven_shards", 1, 2, 9)])
def test_skip_samples_resumes_exactly(request, fixture, world_size, num_workers, skip):
    common = dict(batch_size=8, rank=world_size - 1, world_size=world_size, num_workers=num_workers, epoch=5,
                  transform=add_noise)
    full = list(make_train_loader(request.getfixturevalue(fixture), **common))
    resumed = make_train_loader(request.getfixturevalue(fixture), skip_samples=skip * 8 * world_size, **common)
    assert len(resumed) == len(full) - skip and resumed.steps_per_epoch == len(full)
    tail = list(resumed)
    assert indices(tail) == indices(full[skip:])
    for a, b in zip(tail, full[skip:], strict=True):
        torch.testing.assert_close(a, b)
    seen = sum(indices(full), [])
    assert len(seen) == len(set(seen))


def test_skip_samples_must_be_a_step_boundary(many_shards):
    with pytest.raises(ValueError, match="skip_samples 8 must be a multiple of the global batch 16"):
        make_train_loader(many_shards, batch_size=8, rank=0, world_size=2, skip_samples=8)


def test_same_seed_and_epoch_reproduce_and_epochs_differ(one_shard):
    def epoch(e, seed=0):
        return indices(make_train_loader(one_shard, batch_size=8, rank=0, world_size=1, epoch=e, seed=seed,
                                         shuffle_buffer=50))

    assert epoch(0) == epoch(0)
    assert epoch(0) != epoch(1) and sorted(sum(epoch(0), [])) == sorted(sum(epoch(1), []))
    assert epoch(0) != epoch(0, seed=1)


def test_augmentation_depends_only_on_seed_epoch_and_index(many_shards):
    def noise_by_index(**kwargs):
        batches = [b for rank in run_ranks(many_shards, transform=add_noise, epoch=2, **kwargs) for b in rank]
        return {int(i): n for b in batches for i, n in zip(b["index"], b["noise"], strict=True)}

    single = noise_by_index(world_size=1, batch_size=16)
    split = noise_by_index(world_size=2, batch_size=8, num_workers=2)
    assert single.keys() == split.keys()
    for i in single:
        torch.testing.assert_close(single[i], split[i])
    other_epoch = [b for b in make_train_loader(many_shards, batch_size=16, rank=0, world_size=1, epoch=3,
                                                transform=add_noise)]
    i, noise = int(other_epoch[0]["index"][0]), other_epoch[0]["noise"][0]
    assert not torch.equal(noise, single[i])


# ---------------------------------------------------------------- evaluation


def test_eval_ranks_cover_the_split_exactly_in_order(many_shards):
    images, labels, index = load_split_tensors(many_shards, "test")
    assert images.shape == (21, 1, 28, 28) and index.tolist() == list(range(21))
    loaders = [make_eval_loader(many_shards, batch_size=4, rank=r, world_size=2) for r in range(2)]
    assert [len(loader) for loader in loaders] == [3, 3]  # 11 and 10 samples: no padding, no drop
    got = {r: torch.cat([b["index"] for b in loader]).tolist() for r, loader in enumerate(loaders)}
    assert got == {0: list(range(0, 21, 2)), 1: list(range(1, 21, 2))}
    batches = list(loaders[0])
    assert [len(b["index"]) for b in batches] == [4, 4, 3]
    torch.testing.assert_close(batches[0]["image"], images[[0, 2, 4, 6]])
    torch.testing.assert_close(batches[0]["label"], labels[[0, 2, 4, 6]])


# ---------------------------------------------------------------- decoded-image cache


def test_decoded_cache_gives_the_same_batches_on_every_rank_and_worker(many_shards, monkeypatch):
    monkeypatch.setattr(shards_module, "_DECODED", {})
    common = dict(batch_size=8, world_size=2, num_workers=2, transform=add_noise)
    for epoch in (0, 1):
        from_disk = run_ranks(many_shards, epoch=epoch, cache_bytes=0, **common)
        assert epoch or not shards_module._DECODED
        from_memory = run_ranks(many_shards, epoch=epoch, cache_bytes=1 << 30, **common)
        assert len(shards_module._DECODED) == 8  # every shard, decoded once
        for disk, memory in zip(from_disk, from_memory, strict=True):
            assert indices(disk) == indices(memory)
            for a, b in zip(disk, memory, strict=True):
                torch.testing.assert_close(a, b)


def test_decoded_cache_stays_within_its_budget(many_shards, monkeypatch):
    monkeypatch.setattr(shards_module, "_DECODED", {})
    shard_bytes = 12 * 28 * 28  # 12 uint8 digits a shard
    loader = make_train_loader(many_shards, batch_size=8, rank=0, world_size=1, cache_bytes=2 * shard_bytes + 100)
    assert len(shards_module._DECODED) == 2
    assert len(sorted(sum(indices(loader), []))) == N_TRAIN  # the rest still comes from disk
