"""DataLoader workers follow the stop-signal handler they inherit, not torch's.

torch gives every DataLoader worker a C handler for SIGTERM: exit at once when the parent sends it,
die by the default action when anyone else does. A scheduler that signals every process of a job
(Slurm, systemd, ``kill -- -PGID``) then kills the workers under a trainer that still needs batches
up to its next checkpoint, and the trainer fails with "DataLoader worker ... is killed by signal"
wherever it is (mid-backward, mid-save). The handler forked from the trainer (``vitssl.engine.lifetime``)
decides instead: a worker reads on until the trainer gives up on it.
"""
from __future__ import annotations

import signal


def keep_inherited_sigterm(worker_id: int) -> None:
    """``worker_init_fn``: SIGTERM back to the Python handler the worker inherited, where there is one
    (a process that never set one keeps torch's)."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)
