"""Frozen-encoder features, streamed in batches through the evaluation loader on every process."""
from __future__ import annotations

from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from vitssl.data import DataConfig, EvalLoader
from vitssl.models import Encoder


@torch.no_grad()
def stream_split(accelerator: Accelerator, shards: str | DataConfig, split: str, batch_size: int,
                 fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], check_sha: bool = True) -> dict[str, torch.Tensor]:
    """Apply `fn` (images (B, C, H, W) on the device -> named (B, ...) tensors) to a whole split.

    Each process reads an exact, disjoint share (positions p % world == rank), so no sample is padded
    or counted twice; the results are gathered to every process and returned in manifest order, on the
    CPU, with the split's `label`s. Only one batch of images is ever in memory. `shards`: a shard spec, or
    the run's data: section (then its crops apply: images of any size are resized and centre-cropped).
    """
    data = shards if isinstance(shards, DataConfig) else DataConfig(shards=str(shards), check_sha=check_sha)
    loader = EvalLoader(data, split, batch_size=batch_size, rank=accelerator.process_index,
                        world_size=accelerator.num_processes)
    parts: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        out = {k: v.float().cpu() for k, v in fn(batch["image"].to(accelerator.device)).items()}
        parts.append(out | {"label": batch["label"], "index": batch["index"]})
    if accelerator.num_processes > 1:
        parts = gather_object(parts)
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = merged.pop("index").argsort()
    return {k: v[order] for k, v in merged.items()}


def split_features(accelerator: Accelerator, encoder: Encoder, shards: str | DataConfig, split: str,
                   batch_size: int, pool: str = "cls", check_sha: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled embeddings (N, D) and labels (N,) of a split; the encoder's train/eval mode is restored."""
    was_training = encoder.training
    encoder.eval()
    out = stream_split(accelerator, shards, split, batch_size, lambda x: {"features": encoder.embed_images(x, pool)},
                       check_sha)
    encoder.train(was_training)
    return out["features"], out["label"]


def feature_stats(train: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and scale (std + eps) of `train` (N, D): what standardise subtracts and divides by."""
    return train.mean(0), train.std(0) + eps


def standardise(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """Zero mean, unit variance per feature with the statistics of `train` only."""
    mean, scale = feature_stats(train, eps)
    return [(t - mean) / scale for t in (train, *others)]
