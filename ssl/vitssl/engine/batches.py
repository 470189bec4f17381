"""A batch from the loader, as the model on the device takes it."""
from __future__ import annotations

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
