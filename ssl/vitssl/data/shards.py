"""Streaming readers of webdataset shards (``data_prep`` output or any tar of ``.png``/``.jpg`` + ``.cls``).

Training: which sample fills which place of the epoch is decided by ``epoch_plan`` from (seed, epoch,
global batch) alone, not by accelerate (see PITFALLS) and not by the world size or the workers. A rank
reads the streams its places fall in; its DataLoader workers each take a contiguous group of those
streams, make their samples (decode, crop, the objective's transform) and stack them into one part
per micro-batch, which the main process puts side by side (``vitssl.data.batches``). Per-sample
randomness is seeded from (seed, epoch, index) wherever the sample is processed, so the batches (and
their augmentations) of 2 processes x B equal those of 1 process x 2B, and resuming at any optimizer
step on any world size continues the same sequence.
"""

from __future__ import annotations

import heapq
import itertools
import os
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vitssl.data.batches import Part, assemble, batch_parts, buffer_collate, collate
from vitssl.data.buffers import BufferReader, BufferWriter, buffer_flags
from vitssl.data.epoch_plan import EpochPlan
from vitssl.data.manifest import DataError
from vitssl.data.options import DataConfig
from vitssl.data.samples import SampleMaker, Transform, decode_raw, to_float
from vitssl.data.sources import Shard, local_path, split_shards
from vitssl.data.tar_stream import read_shard, sample_offsets
from vitssl.data.worker_signals import keep_inherited_sigterm

# ---------------------------------------------------------------- decoded-image cache

# uint8 images and labels of whole local shards, per (path, size, mtime), kept for the life of the
# process: a 300-image split trained for 300 epochs is read and decoded once, not 300 times. Filled
# in the main process before DataLoader workers fork, so they share it.
_DECODED: dict[tuple[str, int, int], list[tuple[torch.Tensor, int]]] = {}


def _file_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def decoded_shards(shards: list[Shard], budget_bytes: int) -> dict[int, list[tuple[torch.Tensor, int]]]:
    """Shard number -> its decoded samples, for the local shards in the process's cache; shards not
    yet there are decoded into it while it stays within ``budget_bytes`` (estimated from the shard's
    first image), the others stay on disk."""
    found: dict[int, list[tuple[torch.Tensor, int]]] = {}
    held = None  # bytes in the cache, counted only when a shard may be added
    for k, shard in enumerate(shards):
        path = local_path(shard.url)
        if path is None:
            continue
        key = _file_key(path)
        if key not in _DECODED:
            if held is None:
                held = sum(_nbytes(image) for images in _DECODED.values() for image, _ in images)
            first = next(read_shard(shard, stop=1, verify=False), None)
            if first is None or held + shard.count * _nbytes(decode_raw(first[1])[0]) > budget_bytes:
                continue
            _DECODED[key] = [decode_raw(raw) for _, raw in read_shard(shard, verify=False)]
            held += sum(_nbytes(image) for image, _ in _DECODED[key])
        found[k] = _DECODED[key]
    return found


def _nbytes(image: torch.Tensor) -> int:
    return image.numel() * image.element_size()


def _identity(x):
    return x


# ---------------------------------------------------------------- reading one stream


def _stream_inputs(plan: EpochPlan, c: int, wanted: set[int], verify: bool,
                   decoded: dict[int, list]) -> Iterator[tuple[int, dict]]:
    """``(offset in stream c, raw sample)`` for the wanted offsets, in stream order; from memory for
    the shards in ``decoded`` (shard number -> its decoded samples)."""
    base = 0
    for k, first, stop in plan.segments(c):
        shard, shift = plan.shards[k], base - first
        cached = decoded.get(k)
        if cached is not None:
            for i in range(first, stop):
                if shift + i in wanted:
                    yield shift + i, {"__decoded__": cached[i], "__index__": plan.first_index[k] + i}
        else:
            for i, raw in read_shard(shard, lambda i, s=shift: s + i in wanted, stop, verify, start=first):
                raw["__index__"] = plan.first_index[k] + i
                yield shift + i, raw
        base += stop - first


def _stream_samples(plan: EpochPlan, c: int, piece: range, first_step: int, verify: bool,
                    decoded: dict[int, list], keep: Callable[[int], bool] | None = None
                    ) -> Iterator[tuple[int, dict]]:
    """``(global position, raw sample)`` at places ``piece`` of stream ``c`` in global batches
    ``first_step..`` (those whose position ``keep`` accepts), in increasing position. Holds at most the
    shuffle buffer's worth of samples."""
    m, order = plan.per_stream, plan.stream_order(c)
    outs = [k * m + j for k in range(first_step, plan.steps) for j in piece
            if keep is None or keep(k * plan.global_batch + c * m + j)]
    inputs = _stream_inputs(plan, c, {order[o] for o in outs}, verify, decoded)
    held: dict[int, dict] = {}
    for o in outs:
        while order[o] not in held:
            offset, raw = next(inputs)
            held[offset] = raw
        k, j = divmod(o, m)
        yield k * plan.global_batch + c * m + j, held.pop(order[o])
    if not all(s.local for s in plan.shards):
        for _ in inputs:  # the rest of the range, so the stream that ends a remote shard checks its sha256
            pass


class _RankParts(IterableDataset):
    """What one rank's DataLoader workers produce: one stacked part per micro-batch they contribute to
    (``vitssl.data.batches``).

    Local shards: worker w makes the whole micro-batches b with b % workers == w, reading every stream
    of the rank and seeking over the samples of the other workers' batches; the main process then has
    nothing to put together. Remote shards are read once, so each worker reads a contiguous group of
    the rank's streams instead, and a batch arrives in parts, one per worker, each in contiguous slots."""

    def __init__(self, plan: EpochPlan, places: range, first_step: int, batch_size: int, workers: int,
                 make: SampleMaker, verify: bool, decoded: dict[int, list]):
        self.plan, self.places, self.first_step, self.batch_size = plan, places, first_step, batch_size
        self.make, self.verify, self.decoded, self.workers = make, verify, decoded, workers
        pieces = [(c, plan.stream_places(c, places)) for c in range(plan.streams)]
        self.pieces = [(c, piece) for c, piece in pieces if len(piece)]
        self.whole_batches = workers > 1 and all(s.local for s in plan.shards)
        self.buffers: torch.Tensor | None = None  # the epoch's busy table (vitssl.data.buffers), set before workers start

    def _place(self, position: int) -> int:
        k, q = divmod(position, self.plan.global_batch)
        return k * len(self.places) + q - self.places.start

    def _streams(self, worker: int) -> list[Iterator[tuple[int, dict]]]:
        plan, n, w = self.plan, len(self.pieces), self.workers
        if not self.whole_batches:
            return [_stream_samples(plan, c, piece, self.first_step, self.verify, self.decoded)
                    for c, piece in self.pieces[worker * n // w:(worker + 1) * n // w]]
        mine = lambda position: self._place(position) // self.batch_size % w == worker  # noqa: E731
        return [_stream_samples(plan, c, piece, self.first_step, self.verify, self.decoded, mine)
                for c, piece in self.pieces]

    def _samples(self, worker: int) -> Iterator[tuple[int, dict]]:
        """(place in this rank's epoch sequence, sample) for this worker, in increasing place."""
        streams = self._streams(worker)
        for position, raw in heapq.merge(*streams, key=lambda item: item[0]):
            yield self._place(position), self.make(raw)

    def __iter__(self) -> Iterator[Part]:
        info = get_worker_info()
        try:
            stack = collate if info is None else buffer_collate(BufferWriter(self.buffers, info.id))
            yield from batch_parts(self._samples(info.id if info is not None else 0), self.batch_size, stack)
        except DataError as err:
            if info is None:
                raise
            # as an item, not raised: the DataLoader would wrap the one-line message in the worker's traceback
            yield 0, None, str(err)


# ---------------------------------------------------------------- loaders


class TrainLoader:
    """One epoch of one rank: ``len(self)`` micro-batches ``{"image": (B, C, H, W), "label": (B,),
    "index": (B,), ...the transform's keys}``, ``grad_accum`` per optimizer step, from global position
    ``skip_samples`` (= optimizer steps done x global batch).

    ``data``: the run's ``data:`` section (shards, split, batch size, workers, shuffle, streams, cache,
    crops). The rest is what the run decides. ``transform(sample) -> dict`` runs in the workers with
    torch's RNG seeded from (seed, epoch, index). ``float_pixels``: images as float32 in [0, 1]
    (converted in this process); False: uint8 as read, for a consumer that converts them on its
    device (``vitssl.engine.batches``), unless the transform read them as floats. ``pin_memory``: batches
    in page-locked memory, for a non-blocking copy to a GPU.
    """

    def __init__(self, data: DataConfig, *, rank: int = 0, world_size: int = 1, grad_accum: int = 1, seed: int = 0,
                 epoch: int = 0, skip_samples: int = 0, transform: Transform | None = None,
                 float_pixels: bool = True, pin_memory: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        global_batch = data.batch_size * world_size * grad_accum
        self.plan = EpochPlan.build(split_shards(data.shards, data.split, data.check_sha), global_batch=global_batch,
                                    streams=data.streams, seed=seed, epoch=epoch, shuffle=data.shuffle,
                                    shuffle_buffer=data.shuffle_buffer,
                                    where=f"split {data.split!r} of {data.shards}")
        self.steps_per_epoch = self.plan.steps  # optimizer steps, the same on every rank in every epoch
        if skip_samples % global_batch or not 0 <= skip_samples <= self.steps_per_epoch * global_batch:
            raise ValueError(f"skip_samples {skip_samples} must be a multiple of the global batch {global_batch} "
                             f"within the epoch's {self.steps_per_epoch * global_batch} samples")
        self.batch_size, self.grad_accum, self.num_workers = data.batch_size, grad_accum, data.num_workers
        self.float_pixels, self.pin_memory = float_pixels, pin_memory
        self.steps_done = skip_samples // global_batch
        # before workers fork, so they inherit the cached offsets and images
        decoded = decoded_shards(self.plan.shards, int(data.cache_mb * (1 << 20))) if data.cache_mb else {}
        for k, shard in enumerate(self.plan.shards):
            if shard.local and k not in decoded:
                sample_offsets(local_path(shard.url))
        make = SampleMaker(data, data.crop, transform, seed, epoch)
        self._dataset = _RankParts(self.plan, self.plan.rank_places(rank, world_size), self.steps_done,
                                   data.batch_size, max(data.num_workers, 1), make, data.check_sha, decoded)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.steps_done) * self.grad_accum

    def __iter__(self) -> Iterator[dict]:
        parts: Iterator[Part] = iter(self._dataset)
        reader = None
        if self.num_workers > 0:
            self._dataset.buffers = buffer_flags(self.num_workers)  # fresh workers, fresh buffers: every epoch
            reader = BufferReader(self._dataset.buffers)
            parts = iter(DataLoader(self._dataset, batch_size=None, num_workers=self.num_workers,
                                    collate_fn=_identity, prefetch_factor=4,
                                    worker_init_fn=keep_inherited_sigterm))
        batches = assemble(parts, self.steps_done * self.grad_accum, self.steps_per_epoch * self.grad_accum,
                           self.batch_size, self.pin_memory, reader)
        return map(float_images, batches) if self.float_pixels else batches


def float_images(batch: dict) -> dict:
    """uint8 image batches (>= 4-D) as float32 in [0, 1]; everything else as it is."""
    return {k: to_float(v) if torch.is_tensor(v) and v.dtype == torch.uint8 and v.ndim >= 4 else v
            for k, v in batch.items()}


def make_train_loader(shards: str | Path, split: str = "train", *, batch_size: int, rank: int, world_size: int,
                      grad_accum: int = 1, num_workers: int = 0, seed: int = 0, epoch: int = 0,
                      transform: Transform | None = None, skip_samples: int = 0, cache_bytes: int = 0,
                      **options) -> TrainLoader:
    """``TrainLoader`` in keyword form, for scripts and tests: ``options`` are other ``data:`` keys
    (shuffle, shuffle_buffer, streams, check_sha, crop, ...). No decoded-image cache unless asked."""
    data = DataConfig(shards=str(shards), split=split, batch_size=batch_size, num_workers=num_workers,
                      cache_mb=cache_bytes / (1 << 20), **options)
    return TrainLoader(data, rank=rank, world_size=world_size, grad_accum=grad_accum, seed=seed, epoch=epoch,
                       skip_samples=skip_samples, transform=transform)


class EvalLoader:
    """Batches of the samples at positions ``p % world_size == rank`` in manifest order: no padding,
    no drop, so the ranks together see every sample exactly once. Images as float32 in [0, 1], resized
    and centre-cropped to ``data.image_size`` when ``data.crop`` is not none."""

    def __init__(self, data: DataConfig, split: str | None = None, *, batch_size: int | None = None, rank: int = 0,
                 world_size: int = 1, transform: Transform | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        split = data.eval_split if split is None else split
        self.shards, self.check_sha = split_shards(data.shards, split, data.check_sha), data.check_sha
        self.batch_size, self.rank, self.world_size = batch_size or data.batch_size, rank, world_size
        self.make = SampleMaker(data, "none" if data.crop == "none" else "center", transform, 0, 0)
        self.num_samples = len(range(rank, sum(s.count for s in self.shards), world_size))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def _samples(self) -> Iterator[dict]:
        first = 0
        for shard in self.shards:
            keep = lambda i, f=first: (f + i) % self.world_size == self.rank  # noqa: E731
            for i, raw in read_shard(shard, keep, verify=self.check_sha):
                raw["__index__"] = first + i
                yield self.make(raw)
            first += shard.count

    def __iter__(self) -> Iterator[dict]:
        samples = self._samples()
        while held := list(itertools.islice(samples, self.batch_size)):
            yield float_images(collate(held))


def make_eval_loader(shards: str | Path, split: str = "test", *, batch_size: int,
                     transform: Transform | None = None, rank: int = 0, world_size: int = 1,
                     check_sha: bool = True) -> EvalLoader:
    """``EvalLoader`` in keyword form, for images as stored."""
    return EvalLoader(DataConfig(shards=str(shards), check_sha=check_sha), split, batch_size=batch_size,
                      transform=transform, rank=rank, world_size=world_size)


def load_split_tensors(shards: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole split in manifest order: images (N, C, H, W) float32, labels (N,) int64, indices (N,) int64."""
    batches = list(make_eval_loader(shards, split, batch_size=1024))
    return tuple(torch.cat([b[k] for b in batches]) for k in ("image", "label", "index"))
