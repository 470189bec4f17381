"""Whole parameters for forwards outside the DeepSpeed engine (ZeRO-3 shards them)."""
from __future__ import annotations

import contextlib

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType


def gathered_parameters(accelerator: Accelerator, model: torch.nn.Module):
    """Whole parameters for a forward outside the DeepSpeed engine (figures): ZeRO-3 gathers a module's
    shards only inside the engine's own forward. Collective: every process must enter. A no-op elsewhere."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return contextlib.nullcontext()
    from deepspeed import zero

    return zero.GatheredParameters(list(model.parameters()))
