"""Streaming readers of ``data_prep`` shards.

Training: the split is divided between ``world_size * num_workers`` slots by this module (not by
accelerate, see PITFALLS), every rank yields the same number of full batches, and the order is a
pure function of (seed, epoch), so ``skip_batches`` resumes mid-epoch exactly.

Each rank's sample stream is defined as the round-robin merge of its workers' streams (worker 0,
1, ..., in rounds; an exhausted worker drops out). Every sample carries its position in that merge,
so workers skip and stop without talking to each other, and the main process restores the exact
order with a small heap whatever order the DataLoader delivers them in.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from torchvision.io import ImageReadMode, decode_image

from vitssl.data.manifest import DataError, load_manifest, split_info, verify_split

Transform = Callable[[dict], dict]


# ---------------------------------------------------------------- one sample


def decode_sample(sample: dict) -> dict:
    """Raw ``{"__key__", "png"|"jpg": bytes, "cls": bytes}`` -> ``image`` (C, H, W) float32 in [0, 1],
    ``label`` and ``index`` int64 scalars. The index is the key's suffix (``<split>-<index>``)."""
    ext = "png" if "png" in sample else "jpg"
    # torchvision's decoder is about twice as fast as PIL's on small images. Tiny ImageNet has some
    # grayscale JPEGs among the colour ones; PNG shards are grayscale throughout.
    mode = ImageReadMode.UNCHANGED if ext == "png" else ImageReadMode.RGB
    image = decode_image(torch.frombuffer(bytearray(sample[ext]), dtype=torch.uint8), mode=mode)
    return {"image": image.to(torch.float32).div_(255),
            "label": torch.tensor(int(sample["cls"]), dtype=torch.int64),
            "index": torch.tensor(int(sample["__key__"].rsplit("-", 1)[1]), dtype=torch.int64)}


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


def _read_shard(path: str, keep: Callable[[int], bool] = lambda i: True) -> Iterator[dict]:
    """Samples of one shard in file order; bytes are read only for samples ``keep(i)`` accepts.

    Parses the plain ustar headers that data_prep writes directly: tarfile's generic parser costs as
    much time as decoding the image.
    """
    with open(path, "rb") as f:
        i, key, sample = -1, None, None
        while len(header := f.read(512)) == 512 and header[0]:  # a zero block ends the archive
            if header[156] not in b"0\0":
                raise DataError(f"{path}: unsupported tar member type {header[156:157]!r}; re-run data_prep")
            name = header[:100].split(b"\0", 1)[0].decode()
            size = int(header[124:136].split(b"\0", 1)[0] or b"0", 8)
            member_key, _, ext = name.partition(".")
            if member_key != key:
                if sample is not None:
                    yield sample
                i, key = i + 1, member_key
                sample = {"__key__": key} if keep(i) else None
            padded = -(-size // 512) * 512
            if sample is not None and ext != "json":  # metadata is not needed to train
                sample[ext] = f.read(size)
                f.seek(padded - size, 1)
            else:
                f.seek(padded, 1)
        if sample is not None:
            yield sample


# ---------------------------------------------------------------- the epoch plan


@dataclass(frozen=True)
class _Plan:
    """Which samples of one epoch go to which slot (slot = rank * workers + worker)."""

    paths: tuple[str, ...]  # shards in this epoch's order
    counts: tuple[int, ...]
    slots: int
    shard_level: bool

    def slot_count(self, slot: int) -> int:
        if self.shard_level:
            return sum(self.counts[slot:: self.slots])
        return len(range(slot, sum(self.counts), self.slots))

    def slot_stream(self, slot: int) -> Iterator[dict]:
        if self.shard_level:
            for path in self.paths[slot:: self.slots]:
                yield from _read_shard(path)
            return
        offset = 0  # position of the shard's first sample in the epoch's concatenated stream
        for path, count in zip(self.paths, self.counts, strict=True):
            yield from _read_shard(path, lambda i, o=offset: (o + i) % self.slots == slot)
            offset += count


def _shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        buffer[j], item = item, buffer[j]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def _merge_position(counts: tuple[int, ...], worker: int, j: int) -> int:
    """Position of worker ``worker``'s ``j``-th sample in the round-robin merge of streams of ``counts``."""
    return sum(min(c, j) for c in counts) + sum(c > j for c in counts[:worker])


def _to_numpy(sample: dict) -> dict:
    # Small numpy arrays pickle through the worker queue far faster than tensors (one shm file each).
    return {k: v.numpy() if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16 else v
            for k, v in sample.items()}


def _identity(x):
    return x


class _RankSamples(IterableDataset):
    """What one rank's DataLoader workers produce: lists of ``(position, sample)`` for positions in
    [start, stop). Lists of a few samples, not single ones, because each item crossing the worker
    queue costs a pickle and a pipe round trip; batches are still formed across workers."""

    chunk = 32

    def __init__(self, plan: _Plan, rank: int, workers: int, start: int, stop: int, seed: int, epoch: int,
                 shuffle_buffer: int, transform: Transform | None):
        self.plan, self.rank, self.workers = plan, rank, workers
        self.start, self.stop = start, stop
        self.seed, self.epoch, self.shuffle_buffer, self.transform = seed, epoch, shuffle_buffer, transform
        self.counts = tuple(plan.slot_count(rank * workers + w) for w in range(workers))

    def __iter__(self) -> Iterator[list[tuple[int, dict]]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = self.rank * self.workers + worker
        stream = self.plan.slot_stream(slot)
        if self.shuffle_buffer > 1:
            stream = _shuffled(stream, self.shuffle_buffer, random.Random(f"{self.seed}/{self.epoch}/{slot}"))
        chunk = []
        for j, raw in enumerate(stream):
            pos = _merge_position(self.counts, worker, j)
            if pos >= self.stop:
                break
            if pos < self.start:  # skipped batches: not decoded
                continue
            sample = _apply(self.transform, decode_sample(raw), self.seed, self.epoch)
            chunk.append((pos, _to_numpy(sample) if info is not None else sample))
            if len(chunk) == self.chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _in_order(chunks: Iterator[list[tuple[int, dict]]], start: int, stop: int) -> Iterator[dict]:
    heap: list = []
    expected, tie = start, itertools.count()
    for chunk in chunks:
        for pos, sample in chunk:
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


def _shards(shard_dir: str | Path, split: str, check_sha: bool) -> tuple[list[str], list[int]]:
    manifest = load_manifest(shard_dir)
    verify_split(shard_dir, split, manifest, check_sha=check_sha)
    shards = split_info(manifest, split, shard_dir)["shards"]
    return [str(Path(shard_dir) / s["name"]) for s in shards], [s["count"] for s in shards]


class TrainLoader:
    """Exactly ``len(self)`` = ``steps_per_epoch - skip_batches`` batches of one epoch for one rank."""

    def __init__(self, shard_dir: str | Path, split: str, *, batch_size: int, rank: int, world_size: int,
                 num_workers: int, seed: int, epoch: int, shuffle: bool, shuffle_buffer: int,
                 transform: Transform | None, skip_batches: int, split_by: str, check_sha: bool):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if split_by not in ("auto", "shard", "sample"):
            raise ValueError(f"split_by must be 'auto', 'shard' or 'sample', got {split_by!r}")
        paths, counts = _shards(shard_dir, split, check_sha)
        order = list(range(len(paths)))
        if shuffle:  # same permutation on every rank
            random.Random(f"shards/{seed}/{epoch}").shuffle(order)
        self.workers = max(num_workers, 1)
        slots = world_size * self.workers
        shard_level = split_by == "shard" or (split_by == "auto" and len(paths) >= slots)
        if shard_level and len(paths) < slots:
            raise DataError(f"split_by='shard' needs at least {slots} shards, {shard_dir} has {len(paths)}")
        self.plan = _Plan(tuple(paths[i] for i in order), tuple(counts[i] for i in order), slots, shard_level)
        per_rank = [sum(self.plan.slot_count(r * self.workers + w) for w in range(self.workers))
                    for r in range(world_size)]
        self.steps_per_epoch = min(per_rank) // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"batch_size {batch_size} x world_size {world_size} exceeds what split {split!r} of "
                            f"{shard_dir} gives each rank ({min(per_rank)} of {sum(counts)} samples): "
                            f"lower the batch size or make more data")
        if not 0 <= skip_batches <= self.steps_per_epoch:
            raise ValueError(f"skip_batches {skip_batches} outside 0..{self.steps_per_epoch}")
        self.batch_size, self.num_workers, self.skip_batches = batch_size, num_workers, skip_batches
        self._dataset = _RankSamples(self.plan, rank, self.workers, skip_batches * batch_size,
                                     self.steps_per_epoch * batch_size, seed, epoch,
                                     shuffle_buffer if shuffle else 0, transform)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.skip_batches

    def __iter__(self) -> Iterator[dict]:
        items: Iterator = iter(self._dataset)
        if self.num_workers > 0:
            items = iter(DataLoader(self._dataset, batch_size=None, num_workers=self.num_workers,
                                    collate_fn=_identity, prefetch_factor=max(2, self.batch_size // (self.num_workers * _RankSamples.chunk) + 1)))
        return _batches(_in_order(items, self._dataset.start, self._dataset.stop), self.batch_size)


def make_train_loader(shard_dir: str | Path, split: str = "train", *, batch_size: int, rank: int,
                      world_size: int, num_workers: int = 0, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                      shuffle_buffer: int = 1000, transform: Transform | None = None, skip_batches: int = 0,
                      split_by: str = "auto", check_sha: bool = True) -> TrainLoader:
    """One epoch of training batches ``{"image": (B, C, H, W), "label": (B,), "index": (B,), ...}``.

    The split is divided between ``world_size * max(num_workers, 1)`` slots by shard when there are
    enough shards, else by sample position (``split_by`` forces one). Every rank yields the same
    ``steps_per_epoch`` (leftover samples are dropped). ``transform(sample) -> dict`` runs in the
    workers with torch's RNG seeded from (seed, epoch, index).
    """
    return TrainLoader(shard_dir, split, batch_size=batch_size, rank=rank, world_size=world_size,
                       num_workers=num_workers, seed=seed, epoch=epoch, shuffle=shuffle,
                       shuffle_buffer=shuffle_buffer, transform=transform, skip_batches=skip_batches,
                       split_by=split_by, check_sha=check_sha)


class EvalLoader:
    """Batches of the samples at positions ``p % world_size == rank`` in manifest order: no padding,
    no drop, so the ranks together see every sample exactly once."""

    def __init__(self, shard_dir: str | Path, split: str, *, batch_size: int, transform: Transform | None,
                 rank: int, world_size: int, check_sha: bool):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.paths, self.counts = _shards(shard_dir, split, check_sha)
        self.batch_size, self.transform, self.rank, self.world_size = batch_size, transform, rank, world_size
        self.num_samples = len(range(rank, sum(self.counts), world_size))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def _samples(self) -> Iterator[dict]:
        offset = 0
        for path, count in zip(self.paths, self.counts, strict=True):
            keep = lambda i, o=offset: (o + i) % self.world_size == self.rank  # noqa: E731
            for raw in _read_shard(path, keep):
                yield _apply(self.transform, decode_sample(raw), 0, 0)
            offset += count

    def __iter__(self) -> Iterator[dict]:
        return _batches(self._samples(), self.batch_size)


def make_eval_loader(shard_dir: str | Path, split: str = "test", *, batch_size: int,
                     transform: Transform | None = None, rank: int = 0, world_size: int = 1,
                     check_sha: bool = True) -> EvalLoader:
    return EvalLoader(shard_dir, split, batch_size=batch_size, transform=transform, rank=rank,
                      world_size=world_size, check_sha=check_sha)


def load_split_tensors(shard_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole split in manifest order: images (N, C, H, W) float32, labels (N,) int64, indices (N,) int64."""
    batches = list(make_eval_loader(shard_dir, split, batch_size=1024))
    return tuple(torch.cat([b[k] for b in batches]) for k in ("image", "label", "index"))
