"""A DataLoader worker answers SIGTERM with the handler it inherited from the trainer, not torch's: a
signal to the whole job (Slurm, systemd, ``kill -- -PGID``) must not kill the workers under a trainer that
still needs their batches up to its next checkpoint (``vitssl.engine.lifetime``)."""
from __future__ import annotations

import os
import signal

import pytest

from vitssl.data import make_train_loader

_signalled = False


def signal_own_worker_once(sample: dict) -> dict:
    """A transform (it runs in the worker) that sends its process SIGTERM once, as a job-wide signal
    reaches it: not from its parent."""
    global _signalled
    if not _signalled:
        _signalled = True
        os.kill(os.getpid(), signal.SIGTERM)
    return sample


signal_own_worker_once.reads_pixels = False


@pytest.fixture
def sigterm_noted():
    """A Python SIGTERM handler in this process, as the trainer has one while it trains."""
    noted = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
    yield noted
    signal.signal(signal.SIGTERM, before)


def test_a_worker_keeps_the_sigterm_handler_it_inherits(mnist012, sigterm_noted):
    loader = make_train_loader(mnist012, batch_size=50, rank=0, world_size=1, num_workers=1, shuffle=False,
                               transform=signal_own_worker_once)
    batches = list(loader)  # torch's own handler would kill the worker: "DataLoader worker ... killed by signal"
    assert len(batches) == len(loader)
    assert sigterm_noted == []  # the worker's signal stayed in the worker
