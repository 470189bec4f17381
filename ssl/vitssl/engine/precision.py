"""The dtype a model computes in, and the casts DeepSpeed's bf16/fp16 leaves to us."""
from __future__ import annotations

import torch


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in: fp32 (autocast does the rest), or bf16/fp16 when DeepSpeed cast it."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def cast_float_buffers(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """DeepSpeed's bf16/fp16 casts the parameters but not the buffers (fixed position embeddings):
    cast those too, or an fp32 buffer promotes the activations back to fp32 in the middle of the model."""
    for buffer in model.buffers():
        if buffer.is_floating_point() and buffer.dtype != dtype:
            buffer.data = buffer.data.to(dtype)
