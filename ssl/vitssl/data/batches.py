"""Micro-batches are stacked where their samples are made, and cross process boundaries whole.

A DataLoader worker turns the samples it made into one stacked *part* per micro-batch: the batch's
number, the slots its samples take in that batch, and the stacked tensors (in shared memory, so the
main process receives a handle, not the pixels). The main process only puts the parts of a batch
side by side: nothing when one worker made the whole batch, else one copy, straight into pinned
memory when the batch goes to a GPU. Its work per batch does not depend on the batch size or the
image size beyond that copy.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data._utils.collate import default_collate

from vitssl.data.manifest import DataError

Slots = range | list[int]
Part = tuple[int, Slots | None, dict | str]  # (batch number, slots, stacked samples); slots None: an error


def collate(samples: list[dict]) -> dict:
    """Stack samples; one DataError when their images differ in size (a folder of mixed sizes read as stored)."""
    sizes = {tuple(s["image"].shape) for s in samples if "image" in s}
    if len(sizes) > 1:
        raise DataError(f"images of different sizes in one batch ({', '.join(map(str, sorted(sizes)[:3]))}): "
                        f"set data.crop=random_resized (or center) to crop them all to data.image_size")
    return default_collate(samples)


def batch_parts(samples: Iterator[tuple[int, dict]], batch_size: int) -> Iterator[Part]:
    """``(place, sample)`` in increasing place (place = batch number x batch_size + slot) -> one part per
    batch these samples fall in."""
    current, slots, held = -1, [], []
    for place, sample in samples:
        batch, slot = divmod(place, batch_size)
        if batch != current and held:
            yield current, _compact(slots), collate(held)
            slots, held = [], []
        current = batch
        slots.append(slot)
        held.append(sample)
    if held:
        yield current, _compact(slots), collate(held)


def inline_small(part: Part) -> Part:
    """Small tensors of a part (labels, indices, mask noise) as numpy arrays: pickled inline with the part,
    where each tensor would cost the receiver a socket round trip to fetch its shared-memory handle."""
    batch, slots, stacked = part
    if slots is None:
        return part
    return batch, slots, {k: v.numpy() if torch.is_tensor(v) and v.numel() <= SMALL and v.dtype != torch.bfloat16
                          else v for k, v in stacked.items()}


def tensors(stacked: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in stacked.items()}


SMALL = 1 << 16  # elements: below this, pickling the values costs less than sharing the memory


def _compact(slots: list[int]) -> Slots:
    return range(slots[0], slots[-1] + 1) if slots[-1] - slots[0] + 1 == len(slots) else slots


def assemble(parts: Iterator[Part], first: int, stop: int, batch_size: int, pin: bool) -> Iterator[dict]:
    """Batches ``first .. stop - 1`` in order, each as soon as its parts (from any workers, in any
    order) fill it."""
    pending: dict[int, list[tuple[Slots, dict]]] = {}
    filled: dict[int, int] = {}
    expected = first
    for batch, slots, stacked in parts:
        if slots is None:  # a worker's DataError
            raise DataError(stacked)
        pending.setdefault(batch, []).append((slots, tensors(stacked)))
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
