"""Which sample fills which place of an epoch: a pure function of (seed, epoch, global batch, shards).

The epoch's sample sequence is the split's shards in a (seed, epoch) order, concatenated. It is cut
into ``C`` contiguous *streams* of near-equal length (C divides the global batch G; it depends on
the data and G only, never on the world size or the workers). Each stream is shuffled by a buffer
seeded from (seed, epoch, stream). Global batch ``k`` is, stream after stream, the next
``m = G / C`` samples of every stream:

    global position p = k * G + q  (q < G)   <-   stream q // m, output k * m + q % m

so an epoch has ``steps = (N // C) // m`` global batches, leaves out at most G - 1 samples (the last
samples of the streams' shuffled orders, which change from epoch to epoch), and takes no sample
twice. Rank ``r`` of ``W`` takes places ``[r * G / W, (r + 1) * G / W)`` of every global batch, cut into
``grad_accum`` micro-batches, so a run of 2 processes x B and one of 1 process x 2B consume the same
global batches: resuming onto another world size continues the same sequence (like MosaicML
Streaming's canonical nodes, with the streams as the canonical partition).

A rank reads only the streams its places fall in; a stream is read by one rank when W divides C, by
two or more when W > C. Within a rank, its streams are dealt to the DataLoader workers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from vitssl.data.manifest import DataError
from vitssl.data.sources import Shard

# Local files: enough streams to keep up to 16 workers busy (seeking over unused samples is cheap).
# Remote: no more streams than shards, so a shard is fetched by about one stream.
LOCAL_STREAMS_TARGET = 16
MAX_STREAMS = 64


def auto_streams(shards: list[Shard], global_batch: int) -> int:
    """The largest divisor of the global batch not above the target for these shards."""
    local = all(s.local for s in shards)
    target = min(MAX_STREAMS, max(len(shards), LOCAL_STREAMS_TARGET if local else 1))
    return max(c for c in range(1, min(target, global_batch) + 1) if global_batch % c == 0)


def shuffled_order(length: int, buffer: int, rng: random.Random) -> list[int]:
    """The order in which a shuffle buffer of ``buffer`` emits inputs 0..length-1 (as webdataset's
    ``shuffle`` does it: fill, then swap a random slot out per input, shuffle the rest at the end)."""
    if buffer <= 1:
        return list(range(length))
    held: list[int] = []
    out: list[int] = []
    for i in range(length):
        if len(held) < buffer:
            held.append(i)
            continue
        j = rng.randrange(buffer)
        out.append(held[j])
        held[j] = i
    rng.shuffle(held)
    return out + held


@dataclass(frozen=True)
class EpochPlan:
    shards: tuple[Shard, ...]  # in this epoch's order
    first_index: tuple[int, ...]  # split index (manifest order) of each shard's first sample
    global_batch: int
    streams: int
    seed: int
    epoch: int
    shuffle_buffer: int  # per stream; 0 = no shuffle

    @classmethod
    def build(cls, shards: list[Shard], *, global_batch: int, streams: int | None, seed: int, epoch: int,
              shuffle: bool, shuffle_buffer: int, where: str) -> EpochPlan:
        streams = streams or auto_streams(shards, global_batch)
        if global_batch % streams:
            raise ValueError(f"streams {streams} must divide the global batch {global_batch}")
        firsts, total = [], 0
        for s in shards:
            firsts.append(total)
            total += s.count
        order = list(range(len(shards)))
        if shuffle:  # the same permutation on every rank
            random.Random(f"shards/{seed}/{epoch}").shuffle(order)
        plan = cls(tuple(shards[i] for i in order), tuple(firsts[i] for i in order), global_batch, streams, seed,
                   epoch, -(-shuffle_buffer // streams) if shuffle else 0)
        if plan.steps == 0:
            raise DataError(f"the global batch {global_batch} (batch size x processes x grad_accum) exceeds what "
                            f"{where} can fill ({total} samples in {streams} streams of {total // streams}): "
                            f"lower the batch size or make more data")
        return plan

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def per_stream(self) -> int:  # m: places of one stream in a global batch
        return self.global_batch // self.streams

    @property
    def steps(self) -> int:
        return (self.total // self.streams) // self.per_stream

    def stream_range(self, c: int) -> range:
        """Positions of stream ``c`` in the epoch's concatenated sample sequence."""
        return range(c * self.total // self.streams, (c + 1) * self.total // self.streams)

    def stream_order(self, c: int) -> list[int]:
        """Offsets within stream ``c`` in the order it hands them out (only the ``steps * m`` used)."""
        rng = random.Random(f"{self.seed}/{self.epoch}/{c}")
        return shuffled_order(len(self.stream_range(c)), self.shuffle_buffer, rng)[: self.steps * self.per_stream]

    def segments(self, c: int) -> Iterator[tuple[int, int, int]]:
        """``(shard, first, stop)``: stream ``c`` is samples [first, stop) of these shards, in order."""
        span, start = self.stream_range(c), 0
        for k, shard in enumerate(self.shards):
            lo, hi = max(span.start, start), min(span.stop, start + shard.count)
            if lo < hi:
                yield k, lo - start, hi - start
            start += shard.count

    def rank_places(self, rank: int, world_size: int) -> range:
        """Places ``q`` of every global batch that belong to ``rank``."""
        if self.global_batch % world_size:
            raise ValueError(f"global batch {self.global_batch} is not divisible by world_size {world_size}")
        share = self.global_batch // world_size
        return range(rank * share, (rank + 1) * share)

    def stream_places(self, c: int, places: range) -> range:
        """The places of stream ``c`` within ``places``, as offsets 0..m-1 inside the stream's piece."""
        m = self.per_stream
        return range(max(places.start, c * m) - c * m, max(min(places.stop, (c + 1) * m) - c * m, 0))
