"""The Accelerator every run builds: CPU, one GPU, many GPUs or DeepSpeed, as `accelerate launch` set it up."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from vitssl.config.schema import RunConfig
from vitssl.engine.deepspeed_config import fill_deepspeed_config


class LaunchError(RuntimeError):
    """The processes accelerate launched do not form the group the run needs."""


def build_accelerator(run: RunConfig, batch_size: int | None = None) -> Accelerator:
    """One Accelerator for CPU, one GPU, many GPUs or DeepSpeed, as `accelerate launch` set it up.

    Without CUDA we pass cpu=True: only then does `accelerate launch --num_processes 2` form a real
    gloo process group on CPU instead of N processes that each train alone. cpu=True would also
    silently turn a DeepSpeed launch into plain CPU DDP, so DeepSpeed launches go without it and are
    checked below instead.
    """
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=False)]
    if deepspeed and not torch.cuda.is_available():
        # With no device backend accelerate gives every DeepSpeed rank num_processes=1; naming gloo
        # makes it see the real group, and DeepSpeed trains on CPU processes.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and not deepspeed,
        mixed_precision=run.precision,
        gradient_accumulation_steps=run.grad_accum,
        kwargs_handlers=handlers,
        dynamo_backend="inductor" if run.compile else None,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise LaunchError(
            f"{launched} processes were launched but accelerate's {accelerator.distributed_type} setup sees "
            f"{accelerator.num_processes} on {accelerator.device}: every rank would act as the main process on "
            "the same data. Launch with one of configs/accelerate/*.yaml.")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, batch_size, run.grad_accum,
                              run.grad_clip, accelerator.num_processes)
    return accelerator
