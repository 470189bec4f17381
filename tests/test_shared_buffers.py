"""Workers' reusable shared-memory buffers (vitssl.data.buffers): reused, never overwritten while in use."""

from __future__ import annotations

import pytest
import torch

from vitssl.data import buffers, make_train_loader

from fixtures import make_mnist_shards

pytestmark = pytest.mark.slow  # DataLoader workers for 72 batches: ~20 s, beyond the fast tier's budget


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_mnist_shards(tmp_path_factory.mktemp("digits"), "--train-per-class", "32", "--test-per-class", "2",
                             "--shard-max-count", "24")


@pytest.fixture
def every_tensor_in_buffers(monkeypatch):
    """MNIST batches are small enough to be pickled inline; here even they go through the buffers."""
    monkeypatch.setattr(buffers, "LARGE", 0)


def loader(digits, workers: int, batch_size: int = 4):
    return make_train_loader(digits, batch_size=batch_size, rank=0, world_size=1, num_workers=workers, seed=3)


def test_batches_held_beyond_the_buffers_equal_those_of_one_process(digits, every_tensor_in_buffers, monkeypatch):
    monkeypatch.setattr(buffers, "BUFFERS_PER_WORKER", 3)  # the rest of the 24 batches go torch's own way
    expected = list(loader(digits, 0))
    held = list(loader(digits, 2))
    assert len(held) == len(expected) == 24
    for mine, theirs in zip(held, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), key


def test_buffers_are_reused_once_the_consumer_lets_go(digits, every_tensor_in_buffers):
    # the indices: the images reach the consumer as float copies (make_train_loader's default)
    addresses = [batch["index"].data_ptr() for batch in loader(digits, 2)]
    assert len(addresses) == 24
    # 2 workers x (4 parts the DataLoader prefetches + the one being filled + the one the consumer holds)
    assert len(set(addresses)) <= 12


def test_a_view_kept_from_a_batch_is_never_overwritten(digits, every_tensor_in_buffers):
    kept, addresses = [], []
    for step, batch in enumerate(loader(digits, 2)):
        addresses.append(batch["index"].data_ptr())
        if step % 4 == 0:
            corner = batch["index"][1:3]  # a view: the batch itself is dropped on the next step
            kept.append((corner, corner.clone()))
    assert len(set(addresses)) < len(addresses)  # the buffers of the other batches did come round again
    for view, copy in kept:
        assert torch.equal(view, copy)
