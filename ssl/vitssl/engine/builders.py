"""Accelerator, optimizer and learning-rate schedule: the pieces every run builds the same way."""
from __future__ import annotations

import math
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


def resolve_lr(optim: OptimConfig, global_batch: int) -> tuple[float, str]:
    """Absolute LR and the sentence that explains it (printed at start)."""
    if optim.lr is not None:
        return optim.lr, f"lr {optim.lr:g} (set directly)"
    lr = optim.base_lr * global_batch / 256
    return lr, f"lr {lr:.3g} = base_lr {optim.base_lr:g} x global batch {global_batch} / 256"


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup then half-cosine decay to `floor`; a pure function of the optimizer step."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None):
    """Weight decay on >= 2-D weights only; biases, norms, tokens and position embeddings are exempt.

    lr_scale maps a parameter-name prefix to an LR multiplier (layer-wise decay in fine-tuning).
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
        scale = 1.0
        for prefix, s in (lr_scale or {}).items():
            if name.startswith(prefix):
                scale = s
        groups.setdefault((wd, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in groups.items()]


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, lr: float,
                    lr_scale: dict[str, float] | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, optim.weight_decay, lr_scale), lr=lr, betas=optim.betas)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_training_plan(cfg, accelerator: Accelerator, transform):
    """The data stream and schedule every training run shares (pretrain and fine-tune).

    cfg: a config with data, optim and run sections. Returns (make_loader(epoch, skip), Schedule,
    global batch, peak LR, the sentence explaining the LR).
    """
    from vitssl.data import make_train_loader
    from vitssl.engine.trainer import Schedule

    world = accelerator.num_processes
    global_batch = cfg.data.batch_size * world * cfg.run.grad_accum
    peak_lr, lr_rule = resolve_lr(cfg.optim, global_batch)

    def make_loader(epoch: int, skip: int):
        return make_train_loader(
            cfg.data.shards, cfg.data.split, batch_size=cfg.data.batch_size, rank=accelerator.process_index,
            world_size=world, num_workers=cfg.data.num_workers, seed=cfg.run.seed, epoch=epoch,
            shuffle=cfg.data.shuffle, shuffle_buffer=cfg.data.shuffle_buffer, transform=transform,
            skip_batches=skip, check_sha=cfg.data.check_sha)

    batches = make_loader(0, 0).steps_per_epoch
    steps_per_epoch = batches // cfg.run.grad_accum
    if steps_per_epoch == 0:
        from vitssl.config import ConfigError

        raise ConfigError(f"run.grad_accum={cfg.run.grad_accum} exceeds the {batches} batches of an epoch")
    schedule = Schedule(cfg.run.epochs, steps_per_epoch, cfg.run.grad_accum,
                        warmup_steps=math.ceil(cfg.optim.warmup_epochs * steps_per_epoch), peak_lr=peak_lr,
                        min_lr=cfg.optim.min_lr, max_steps=cfg.run.max_steps)
    return make_loader, schedule, global_batch, peak_lr, lr_rule
