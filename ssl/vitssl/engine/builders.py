"""Accelerator and optimizer: the pieces every run builds the same way."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType

from vitssl.config.schema import OptimConfig, RunConfig


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
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and not deepspeed,
        mixed_precision=run.precision,
        gradient_accumulation_steps=run.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise LaunchError(
            f"{launched} processes were launched but accelerate's {accelerator.distributed_type} setup sees "
            f"{accelerator.num_processes} on {accelerator.device}: every rank would act as the main process on "
            "the same data. DeepSpeed through accelerate needs CUDA devices; on CPU use "
            "configs/accelerate/cpu_2proc.yaml.")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and batch_size:
        # We split the data ourselves and never prepare a DataLoader, so DeepSpeed learns the
        # micro-batch size from us.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
    return accelerator


def param_groups(model: torch.nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None):
    """Weight decay on >= 2-D weights only; biases, norms, tokens and position embeddings are exempt.

    lr_scale maps a parameter name to an LR multiplier (layer-wise decay in fine-tuning).
    """
    skip: set[str] = set()
    for name, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip |= {f"{name}.{n}" if name else n for n in module.no_weight_decay()}
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim < 2 or name in skip or name.endswith("token") else weight_decay
        scale = (lr_scale or {}).get(name, 1.0)
        groups.setdefault((wd, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in groups.items()]


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, lr: float,
                    lr_scale: dict[str, float] | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, optim.weight_decay, lr_scale), lr=lr, betas=optim.betas)
