"""Shared-memory buffers a DataLoader worker refills, so a batch crosses to the main process as a number.

Sending a tensor through a DataLoader queue costs the main process a socket round trip (torch passes
the memory's file descriptor), a new mapping, and, once it drops the batch, the kernel freeing the
pages: at 224 px that was most of its work per batch. Here each worker stacks a part's large tensors
into shared buffers it keeps for the epoch and sends a buffer itself only the first time it is used;
afterwards the part carries ``BufferRef(worker, number)`` and the main process reuses its mapping.

A buffer is free again when the last tensor viewing it is gone, wherever the batch went: the main
process hands out ``torch.from_numpy`` of a fresh numpy view of the buffer, torch's storage keeps that
view alive for as long as any tensor (or view of a tensor) uses the memory, and a finalizer on the
view clears the buffer's flag in a table both sides share. A consumer that holds batches never sees
them overwritten: a worker whose buffers are all held makes a new one, and past
``BUFFERS_PER_WORKER`` sends its tensors the ordinary way.
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch

BUFFERS_PER_WORKER = 32  # per epoch and worker; the DataLoader keeps a few parts in flight, the rest are held by the consumer
LARGE = 1 << 16  # elements: smaller tensors are pickled inline with the part (cheaper than any sharing)


class BufferRef(NamedTuple):
    worker: int
    number: int
    buffer: torch.Tensor | None  # the shared memory, sent once (then None: the receiver has it mapped)


def buffer_flags(workers: int) -> torch.Tensor:
    """The shared busy table of one epoch's workers' buffers (1: the main process may still use it);
    made before the workers start, so that both sides map the same memory."""
    return torch.zeros((workers, BUFFERS_PER_WORKER), dtype=torch.uint8).share_memory_()


class BufferWriter:
    """Worker side: a part's stacked tensors -> buffer references (large) or numpy arrays (small)."""

    def __init__(self, flags: torch.Tensor, worker: int):
        self.busy, self.worker = flags.numpy()[worker], worker
        self.buffers: dict[int, torch.Tensor] = {}

    def pack(self, values: list[torch.Tensor]) -> BufferRef | np.ndarray | torch.Tensor:
        """The stack of ``values`` (same shape and dtype), in the form that crosses the process boundary."""
        shape, dtype = (len(values), *values[0].shape), values[0].dtype
        if dtype == torch.bfloat16:  # numpy has no bfloat16: torch's own sharing
            return torch.stack(values)
        if values[0].numel() * len(values) < LARGE:
            return torch.stack(values).numpy()
        free = np.flatnonzero(self.busy == 0)
        if not len(free):
            return torch.stack(values)  # every buffer is held: torch's own sharing
        number = int(free[0])
        buffer = self.buffers.get(number)
        fresh = buffer is None or buffer.shape != shape or buffer.dtype != dtype
        if fresh:
            buffer = self.buffers[number] = torch.empty(shape, dtype=dtype).share_memory_()
        torch.stack(values, out=buffer)
        self.busy[number] = 1
        return BufferRef(self.worker, number, buffer if fresh else None)


class BufferReader:
    """Main-process side: buffer references -> tensors over the buffers' memory, each buffer freed with
    the last tensor that views it."""

    def __init__(self, flags: torch.Tensor):
        self.busy = flags.numpy()  # keeps the shared table mapped for as long as any finalizer may clear it
        self.mapped: dict[tuple[int, int], np.ndarray] = {}

    def tensor(self, value) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value)
        if not isinstance(value, BufferRef):
            return value
        key = (value.worker, value.number)
        if value.buffer is not None:
            self.mapped[key] = value.buffer.numpy()
        view = self.mapped[key].view()
        release = weakref.finalize(view, self.busy.__setitem__, key, 0)
        release.atexit = False
        return torch.from_numpy(view)
