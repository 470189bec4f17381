"""A batch from the loader, as the model on the device takes it, and the feed that brings it there.

The reader hands over uint8 images (a quarter of float32's bytes) in pinned memory when the device is
a GPU; ``DeviceFeed`` issues the copy of batch k+1 on a side stream while step k runs (timm's
prefetcher, FFCV's idea), and the conversion to float in [0, 1] and the cast to the model's dtype are
device kernels on the compute stream.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch


def to_model_input(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Move a batch to the device and cast its pixels (images, views, clips: >= 3-D) to `dtype`.

    DeepSpeed's bf16/fp16 casts the model and accelerate does not autocast it, so fp32 pixels would
    meet bf16 weights. Lower-dimensional floats (per-sample mask noise) stay fp32: ranked in bf16
    they would tie, and the ties would bias which patches get masked.
    """
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        out[k] = v.to(dtype) if v.is_floating_point() and v.ndim >= 3 and v.dtype != dtype else v
    return out


def device_pixels(batch: dict, dtype: torch.dtype) -> dict:
    """On the device: uint8 image batches (>= 4-D) -> float in [0, 1], then the model's dtype cast."""
    out = {k: v.to(torch.float32).div_(255) if torch.is_tensor(v) and v.dtype == torch.uint8 and v.ndim >= 4
           else v for k, v in batch.items()}
    device = next(v.device for v in out.values() if torch.is_tensor(v))
    return to_model_input(out, device, dtype)


class DeviceFeed:
    """Iterate ``batches`` as model inputs on ``device``, the next one already on its way."""

    def __init__(self, batches: Iterable[dict], device: torch.device, dtype: torch.dtype):
        self.batches, self.device, self.dtype = batches, device, dtype
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _send(self, batch: dict | None) -> dict | None:
        if batch is None:
            return None
        if self.stream is None:
            return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.cuda.stream(self.stream):
            return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _ready(self, batch: dict) -> dict:
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for v in batch.values():
                if torch.is_tensor(v):
                    v.record_stream(current)  # the side stream's memory is in use on the compute stream now
        return device_pixels(batch, self.dtype)

    def __iter__(self) -> Iterator[dict]:
        source = iter(self.batches)
        upcoming = self._send(next(source, None))
        while upcoming is not None:
            batch = self._ready(upcoming)
            upcoming = self._send(next(source, None))
            yield batch
