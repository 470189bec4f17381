"""Micro-batches are stacked where their samples are made, and cross process boundaries whole.

A DataLoader worker turns the samples it made into one stacked *part* per micro-batch: the batch's
number, the places its samples take in that batch, and the stacked tensors (large ones in the
worker's reusable shared-memory buffers, ``vitssl.data.buffers``, so the main process receives a number,
not the pixels). The main process only puts the parts of a batch side by side: nothing when one
worker made the whole batch, else one copy, straight into pinned memory when the batch goes to a
GPU. Its work per batch does not depend on the batch size or the image size beyond that copy.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data._utils.collate import default_collate

from vitssl.data.buffers import BufferReader, BufferWriter
from vitssl.data.manifest import DataError

Slots = range | list[int]
Part = tuple[int, Slots | None, dict | str]  # (batch number, slots, stacked samples); slots None: an error


def _same_image_size(samples: list[dict]) -> None:
    sizes = {tuple(s["image"].shape) for s in samples if "image" in s}
    if len(sizes) > 1:
        raise DataError(f"images of different sizes in one batch ({', '.join(map(str, sorted(sizes)[:3]))}): "
                        f"set data.crop=random_resized (or center) to crop them all to data.image_size")


def collate(samples: list[dict]) -> dict:
    """Stack samples; one DataError when their images differ in size (a folder of mixed sizes read as stored)."""
    _same_image_size(samples)
    return default_collate(samples)


def buffer_collate(writer: BufferWriter) -> Callable[[list[dict]], dict]:
    """``collate`` in a worker: tensors of one shape are stacked into the worker's shared buffers (or
    inline when small); anything else as ``default_collate`` makes it."""
    def stack(samples: list[dict]) -> dict:
        _same_image_size(samples)
        out = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            same = all(torch.is_tensor(v) and v.shape == values[0].shape and v.dtype == values[0].dtype
                       for v in values)
            out[key] = writer.pack(values) if same else default_collate(values)
        return out
    return stack


def batch_parts(samples: Iterator[tuple[int, dict]], batch_size: int,
                stack: Callable[[list[dict]], dict] = collate) -> Iterator[Part]:
    """``(place, sample)`` in increasing place (place = batch number x batch_size + slot) -> one part per
    batch these samples fall in."""
    current, slots, held = -1, [], []
    for place, sample in samples:
        batch, slot = divmod(place, batch_size)
        if batch != current and held:
            yield current, _compact(slots), stack(held)
            slots, held = [], []
        current = batch
        slots.append(slot)
        held.append(sample)
    if held:
        yield current, _compact(slots), stack(held)


def _compact(slots: list[int]) -> Slots:
    return range(slots[0], slots[-1] + 1) if slots[-1] - slots[0] + 1 == len(slots) else slots


def assemble(parts: Iterator[Part], first: int, stop: int, batch_size: int, pin: bool,
             reader: BufferReader | None = None) -> Iterator[dict]:
    """Batches ``first .. stop - 1`` in order, each as soon as its parts (from any workers, in any
    order) fill it. ``reader``: the buffers of the workers that made the parts."""
    pending: dict[int, list[tuple[Slots, dict]]] = {}
    filled: dict[int, int] = {}
    expected = first
    for batch, slots, stacked in parts:
        if slots is None:  # a worker's DataError
            raise DataError(stacked)
        tensors = {k: reader.tensor(v) for k, v in stacked.items()} if reader is not None else stacked
        pending.setdefault(batch, []).append((slots, tensors))
        filled[batch] = filled.get(batch, 0) + len(slots)
        while filled.get(expected) == batch_size:
            del filled[expected]
            yield join(pending.pop(expected), batch_size, pin)
            expected += 1
    if expected != stop:
        raise DataError(f"the shards ended at sample {expected * batch_size + filled.get(expected, 0)} of "
                        f"{stop * batch_size}: re-run data_prep")


def join(parts: list[tuple[Slots, dict]], batch_size: int, pin: bool) -> dict:
    """One batch from its parts: the part itself when there is one, else one copy of each."""
    if len(parts) == 1:
        stacked = parts[0][1]
        return {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in stacked.items()} if pin else stacked
    out = {}
    for key, value in parts[0][1].items():
        if not torch.is_tensor(value):
            merged: list = [None] * batch_size
            for slots, stacked in parts:
                for slot, item in zip(slots, stacked[key], strict=True):
                    merged[slot] = item
            out[key] = merged
            continue
        whole = torch.empty((batch_size, *value.shape[1:]), dtype=value.dtype, pin_memory=pin)
        for slots, stacked in parts:
            if isinstance(slots, range):
                whole[slots.start:slots.stop] = stacked[key]
            else:
                whole[torch.tensor(slots)] = stacked[key]
        out[key] = whole
    return out
