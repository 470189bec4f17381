"""Streaming readers of webdataset shards (``data_prep`` output or any tar of ``.png``/``.jpg`` + ``.cls``).

Training: which sample fills which place of the epoch is decided by ``epoch_plan`` from (seed, epoch,
global batch) alone, not by accelerate (see PITFALLS) and not by the world size or the workers. A rank
reads the streams its places fall in, its DataLoader workers share those streams, and every sample
carries its place, so the main process restores the exact order with a small heap whatever order the
workers deliver in. Per-sample randomness is seeded from (seed, epoch, index) wherever the sample is
processed, so the batches (and their augmentations) of 2 processes x B equal those of 1 process x 2B,
and resuming at any optimizer step on any world size continues the same sequence.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from torchvision.io import ImageReadMode, decode_image

from vitssl.data.epoch_plan import EpochPlan
from vitssl.data.manifest import DataError
from vitssl.data.sources import Shard, local_path, split_shards
from vitssl.data.tar_stream import read_shard, sample_offsets

Transform = Callable[[dict], dict]
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


# ---------------------------------------------------------------- one sample


def _decode_raw(sample: dict) -> tuple[torch.Tensor, int]:
    """Raw ``{"__key__", "png"|"jpg"|...: bytes[, "cls": bytes]}`` -> (uint8 image (C, H, W), label);
    label -1 without a .cls (label-free objectives read none; vitssl.data.checks stops the others)."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise DataError(f"sample {sample.get('__key__')!r} has members {sorted(k for k in sample if k[:2] != '__')}: "
                        f"expected an image ({', '.join(IMAGE_EXTS)})")
    # torchvision's decoder is about twice as fast as PIL's on small images. Tiny ImageNet has some
    # grayscale JPEGs among the colour ones; PNG shards are grayscale throughout.
    mode = ImageReadMode.UNCHANGED if ext == "png" else ImageReadMode.RGB
    image = decode_image(torch.frombuffer(bytearray(sample[ext]), dtype=torch.uint8), mode=mode)
    return image, int(sample["cls"]) if "cls" in sample else -1


def decode_sample(sample: dict) -> dict:
    """A raw sample (or one from the decoded cache) -> ``{"image": (C, H, W) float32 in [0, 1],
    "label": int64, "index": int64}``. The index is ``__index__`` when the reader set it (the
    sample's position in its split), else the key's suffix (``<split>-<index>`` in data_prep shards)."""
    image, label = sample["__decoded__"] if "__decoded__" in sample else _decode_raw(sample)
    index = sample["__index__"] if "__index__" in sample else int(sample["__key__"].rsplit("-", 1)[1])
    return {"image": image.to(torch.float32).div_(255),
            "label": torch.tensor(label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64)}


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
            if first is None or held + shard.count * _nbytes(_decode_raw(first[1])[0]) > budget_bytes:
                continue
            _DECODED[key] = [_decode_raw(raw) for _, raw in read_shard(shard, verify=False)]
            held += sum(_nbytes(image) for image, _ in _DECODED[key])
        found[k] = _DECODED[key]
    return found


def _nbytes(image: torch.Tensor) -> int:
    return image.numel() * image.element_size()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the per-sample RNG: the same wherever (rank, worker) the sample is processed."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _apply(transform: Transform | None, sample: dict, seed: int, epoch: int) -> dict:
    if transform is None:
        return sample
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed also seeds every device backend (15x slower).
        torch.default_generator.manual_seed(sample_seed(seed, epoch, int(sample["index"])))
        return transform(sample)


def _to_numpy(sample: dict) -> dict:
    # Small numpy arrays pickle through the worker queue far faster than tensors (one shm file each).
    return {k: v.numpy() if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16 else v
            for k, v in sample.items()}


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


def _stream_samples(plan: EpochPlan, c: int, piece: range, first_step: int,
                    verify: bool, decoded: dict[int, list]) -> Iterator[tuple[int, dict]]:
    """``(global position, raw sample)`` at places ``piece`` of stream ``c`` in global batches
    ``first_step..``, in increasing position. Holds at most the shuffle buffer's worth of samples."""
    m, order = plan.per_stream, plan.stream_order(c)
    outs = [k * m + j for k in range(first_step, plan.steps) for j in piece]
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


class _RankSamples(IterableDataset):
    """What one rank's DataLoader workers produce: lists of ``(place, sample)``, place = the sample's
    position in this rank's epoch stream. Lists of a few samples, not single ones, because each item
    crossing the worker queue costs a pickle and a pipe round trip; batches are formed in the main
    process across workers."""

    chunk = 32

    def __init__(self, plan: EpochPlan, rank: int, world_size: int, first_step: int, workers: int,
                 transform: Transform | None, verify: bool, decoded: dict[int, list]):
        self.plan, self.first_step, self.workers = plan, first_step, workers
        self.transform, self.verify, self.decoded = transform, verify, decoded
        self.places = plan.rank_places(rank, world_size)
        pieces = [(c, plan.stream_places(c, self.places)) for c in range(plan.streams)]
        self.pieces = [(c, piece) for c, piece in pieces if len(piece)]

    def __iter__(self) -> Iterator[list[tuple[int, dict]]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        plan, share = self.plan, len(self.places)
        streams = [_stream_samples(plan, c, piece, self.first_step, self.verify, self.decoded)
                   for c, piece in self.pieces[worker:: self.workers]]
        chunk = []
        try:
            for position, raw in heapq.merge(*streams, key=lambda item: item[0]):
                k, q = divmod(position, plan.global_batch)
                sample = _apply(self.transform, decode_sample(raw), plan.seed, plan.epoch)
                chunk.append((k * share + q - self.places.start, _to_numpy(sample) if info is not None else sample))
                if len(chunk) == self.chunk:
                    yield chunk
                    chunk = []
        except DataError as err:
            if info is None:
                raise
            # as an item, not raised: the DataLoader would wrap the one-line message in the worker's traceback
            yield [(None, str(err))]
            return
        if chunk:
            yield chunk


def _in_order(chunks: Iterator[list[tuple[int, dict]]], start: int, stop: int) -> Iterator[dict]:
    heap: list = []
    expected, tie = start, itertools.count()
    for chunk in chunks:
        for pos, sample in chunk:
            if pos is None:  # a worker's DataError
                raise DataError(sample)
            heapq.heappush(heap, (pos, next(tie), sample))
        while heap and heap[0][0] == expected:
            yield heapq.heappop(heap)[2]
            expected += 1
    if expected != stop:
        raise DataError(f"the shards ended at sample {expected} of {stop}: re-run data_prep")


def _batches(samples: Iterator[dict], batch_size: int) -> Iterator[dict]:
    while chunk := list(itertools.islice(samples, batch_size)):
        yield default_collate(chunk)


# ---------------------------------------------------------------- loaders


class TrainLoader:
    """One epoch of one rank: ``len(self)`` micro-batches, ``grad_accum`` per optimizer step."""

    def __init__(self, shards: str | Path, split: str, *, batch_size: int, rank: int, world_size: int,
                 grad_accum: int, num_workers: int, seed: int, epoch: int, shuffle: bool, shuffle_buffer: int,
                 transform: Transform | None, skip_samples: int, streams: int | None, check_sha: bool,
                 cache_bytes: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        global_batch = batch_size * world_size * grad_accum
        self.plan = EpochPlan.build(split_shards(shards, split, check_sha), global_batch=global_batch,
                                    streams=streams, seed=seed, epoch=epoch, shuffle=shuffle,
                                    shuffle_buffer=shuffle_buffer, where=f"split {split!r} of {shards}")
        self.steps_per_epoch = self.plan.steps  # optimizer steps, the same on every rank in every epoch
        if skip_samples % global_batch or not 0 <= skip_samples <= self.steps_per_epoch * global_batch:
            raise ValueError(f"skip_samples {skip_samples} must be a multiple of the global batch {global_batch} "
                             f"within the epoch's {self.steps_per_epoch * global_batch} samples")
        self.batch_size, self.grad_accum, self.num_workers = batch_size, grad_accum, num_workers
        self.steps_done = skip_samples // global_batch
        # before workers fork, so they inherit the cached offsets and images
        decoded = decoded_shards(self.plan.shards, cache_bytes) if cache_bytes else {}
        for k, shard in enumerate(self.plan.shards):
            if shard.local and k not in decoded:
                sample_offsets(local_path(shard.url))
        self._dataset = _RankSamples(self.plan, rank, world_size, self.steps_done, max(num_workers, 1), transform,
                                     check_sha, decoded)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.steps_done) * self.grad_accum

    def __iter__(self) -> Iterator[dict]:
        items: Iterator = iter(self._dataset)
        if self.num_workers > 0:
            prefetch = max(2, self.batch_size // (self.num_workers * _RankSamples.chunk) + 1)
            items = iter(DataLoader(self._dataset, batch_size=None, num_workers=self.num_workers,
                                    collate_fn=_identity, prefetch_factor=prefetch))
        share = len(self._dataset.places)
        return _batches(_in_order(items, self.steps_done * share, self.steps_per_epoch * share), self.batch_size)


def make_train_loader(shards: str | Path, split: str = "train", *, batch_size: int, rank: int, world_size: int,
                      grad_accum: int = 1, num_workers: int = 0, seed: int = 0, epoch: int = 0,
                      shuffle: bool = True, shuffle_buffer: int = 1000, transform: Transform | None = None,
                      skip_samples: int = 0, streams: int | None = None, check_sha: bool = True,
                      cache_bytes: int = 0) -> TrainLoader:
    """The rest of one epoch of training micro-batches ``{"image": (B, C, H, W), "label": (B,), "index": (B,)}``
    for ``rank``, from global position ``skip_samples`` (= optimizer steps done x global batch).

    ``shards``: a folder or URL holding manifest.json, or shard URLs (see ``vitssl.data.sources``).
    ``streams``: the canonical partition of the epoch (``epoch_plan``); None picks it from the shards and
    the global batch. ``transform(sample) -> dict`` runs in the workers with torch's RNG seeded from
    (seed, epoch, index). ``cache_bytes``: decoded images of local shards kept in memory for later
    epochs, up to this many bytes per process (0: read and decode every epoch).
    """
    return TrainLoader(shards, split, batch_size=batch_size, rank=rank, world_size=world_size,
                       grad_accum=grad_accum, num_workers=num_workers, seed=seed, epoch=epoch, shuffle=shuffle,
                       shuffle_buffer=shuffle_buffer, transform=transform, skip_samples=skip_samples,
                       streams=streams, check_sha=check_sha, cache_bytes=cache_bytes)


class EvalLoader:
    """Batches of the samples at positions ``p % world_size == rank`` in manifest order: no padding,
    no drop, so the ranks together see every sample exactly once."""

    def __init__(self, shards: str | Path, split: str, *, batch_size: int, transform: Transform | None,
                 rank: int, world_size: int, check_sha: bool):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.shards, self.check_sha = split_shards(shards, split, check_sha), check_sha
        self.batch_size, self.transform, self.rank, self.world_size = batch_size, transform, rank, world_size
        self.num_samples = len(range(rank, sum(s.count for s in self.shards), world_size))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def _samples(self) -> Iterator[dict]:
        first = 0
        for shard in self.shards:
            keep = lambda i, f=first: (f + i) % self.world_size == self.rank  # noqa: E731
            for i, raw in read_shard(shard, keep, verify=self.check_sha):
                raw["__index__"] = first + i
                yield _apply(self.transform, decode_sample(raw), 0, 0)
            first += shard.count

    def __iter__(self) -> Iterator[dict]:
        return _batches(self._samples(), self.batch_size)


def make_eval_loader(shards: str | Path, split: str = "test", *, batch_size: int,
                     transform: Transform | None = None, rank: int = 0, world_size: int = 1,
                     check_sha: bool = True) -> EvalLoader:
    return EvalLoader(shards, split, batch_size=batch_size, transform=transform, rank=rank,
                      world_size=world_size, check_sha=check_sha)


def load_split_tensors(shards: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole split in manifest order: images (N, C, H, W) float32, labels (N,) int64, indices (N,) int64."""
    batches = list(make_eval_loader(shards, split, batch_size=1024))
    return tuple(torch.cat([b[k] for b in batches]) for k in ("image", "label", "index"))
