"""The exact-once epoch over a grid of shard layouts x world sizes 1/2/3 x workers 0/1/2, 3 epochs each.

The ranks are read one after another in this process (a rank's share is a pure function of its rank;
test_data_scale_runs.py trains with real processes). Cases with workers start DataLoader processes
and are marked slow. Asserted in every case:

- within an epoch no sample is yielded twice across ranks and workers;
- at most global_batch - 1 samples are left out, and which ones changes between epochs;
- every rank yields the same number of full batches, the same in every epoch;
- the ranks' batches together are the 1-rank global batches (the sequence ignores world size and workers).
"""

from __future__ import annotations

import pytest

from vitssl.data import make_train_loader

from fixtures import make_mnist_shards

LAYOUTS = {  # name: data_prep options (3 digits), the train shard sizes they give
    "3x100": (["--shard-max-count", "100"], [100, 100, 100]),
    "50,50,50,50,1": (["--train-per-class", "67", "--test-per-class", "1", "--shard-max-count", "50"],
                      [50, 50, 50, 50, 1]),
    "one shard of 96": (["--train-per-class", "32", "--test-per-class", "1"], [96]),
    "12 shards of 7, one of 6": (["--train-per-class", "30", "--test-per-class", "1", "--shard-max-count", "7"],
                                 [7] * 12 + [6]),
}
BATCH = 8  # per rank: the global batch is 8 x world size
EPOCHS = 3


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, tmp_path_factory):
    args, sizes = LAYOUTS[request.param]
    out = make_mnist_shards(tmp_path_factory.mktemp("grid") / "d", *args)
    from vitssl.data import split_shards

    assert [s.count for s in split_shards(out, "train")] == sizes
    return out, sum(sizes)


def epoch_batches(shards, epoch: int, world_size: int, num_workers: int,
                  batch_size: int = BATCH) -> list[list[list[int]]]:
    """[rank][batch] -> sample indices."""
    return [[b["index"].tolist() for b in make_train_loader(shards, batch_size=batch_size, rank=r,
                                                             world_size=world_size, num_workers=num_workers,
                                                             epoch=epoch, seed=7)]
            for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, pytest.param(1, marks=pytest.mark.slow),
                                         pytest.param(2, marks=pytest.mark.slow)])
def test_exact_once_equal_steps_and_the_same_global_batches(layout, world_size, num_workers):
    shards, n = layout
    global_batch = BATCH * world_size
    steps, left_out = set(), []
    for epoch in range(EPOCHS):
        ranks = epoch_batches(shards, epoch, world_size, num_workers)
        steps |= {len(batches) for batches in ranks}
        seen = [i for batches in ranks for batch in batches for i in batch]
        assert len(seen) == len(set(seen)), f"epoch {epoch}: a sample was yielded twice"
        assert set(seen) <= set(range(n))
        assert n - len(seen) <= global_batch - 1, f"epoch {epoch}: {n - len(seen)} samples left out"
        left_out.append(set(range(n)) - set(seen))
        if world_size > 1:
            single = epoch_batches(shards, epoch, 1, 0, batch_size=global_batch)[0]
            assert single == [sum((ranks[r][k] for r in range(world_size)), []) for k in range(len(single))]
    assert len(steps) == 1, f"steps per epoch differ between ranks or epochs: {steps}"
    if any(left_out):
        assert len({frozenset(s) for s in left_out}) > 1, "the same samples are left out in every epoch"
