"""Batches onto the device one step ahead, pixels made float there (timm's prefetcher, FFCV's idea).

The reader hands over uint8 images (a quarter of float32's bytes) in pinned memory when the device is
a GPU; the copy of batch k+1 is issued on a side stream while step k runs, and the conversion to
float in [0, 1] and the cast to the model's dtype are device kernels on the compute stream.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from vitssl.engine.builders import to_model_input


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
