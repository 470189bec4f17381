"""The training plan every run shares: the data stream, the step schedule and the learning rate.

A pure function of the config and the world size, computed the same way on every process before
any training starts, so the planned steps per epoch are known (and checked) up front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from accelerate import Accelerator

from vitssl.config.schema import OptimConfig

LoaderFactory = Callable[[int, int], Iterable[dict]]  # (epoch, optimizer steps already done in it) -> batches


@dataclass
class Schedule:
    epochs: int
    steps_per_epoch: int  # optimizer steps
    grad_accum: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    max_steps: int | None = None

    @property
    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps else total

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)


@dataclass
class TrainingPlan:
    make_loader: LoaderFactory
    schedule: Schedule
    batches_per_epoch: int  # micro-batches one process reads in a full epoch
    global_batch: int  # samples per optimizer step, all processes and accumulation together
    lr_rule: str  # the sentence that explains the peak LR (printed at start)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup then half-cosine decay to `floor`; a pure function of the optimizer step."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def resolve_lr(optim: OptimConfig, global_batch: int) -> tuple[float, str]:
    """Absolute LR and the sentence that explains it."""
    if optim.lr is not None:
        return optim.lr, f"lr {optim.lr:g} (set directly)"
    lr = optim.base_lr * global_batch / 256
    return lr, f"lr {lr:.3g} = base_lr {optim.base_lr:g} x global batch {global_batch} / 256"


def make_training_plan(cfg, accelerator: Accelerator, transform) -> TrainingPlan:
    """cfg: any run config with data, optim and run sections (pretraining and fine-tuning alike)."""
    from vitssl.data import TrainLoader  # at call time: tests wrap it

    world = accelerator.num_processes
    global_batch = cfg.data.batch_size * world * cfg.run.grad_accum
    peak_lr, lr_rule = resolve_lr(cfg.optim, global_batch)

    def make_loader(epoch: int, steps_done: int):
        # uint8 pixels: the trainer's feed makes them float on the device (vitssl.engine.batches)
        return TrainLoader(cfg.data, rank=accelerator.process_index, world_size=world, grad_accum=cfg.run.grad_accum,
                           seed=cfg.run.seed, epoch=epoch, skip_samples=steps_done * global_batch,
                           transform=transform, float_pixels=False, pin_memory=accelerator.device.type == "cuda")

    first = make_loader(0, 0)  # the same steps on every process and in every epoch (vitssl.data.epoch_plan)
    steps_per_epoch = first.steps_per_epoch
    batches = steps_per_epoch * cfg.run.grad_accum
    schedule = Schedule(cfg.run.epochs, steps_per_epoch, cfg.run.grad_accum,
                        warmup_steps=math.ceil(cfg.optim.warmup_epochs * steps_per_epoch), peak_lr=peak_lr,
                        min_lr=cfg.optim.min_lr, max_steps=cfg.run.max_steps)
    return TrainingPlan(make_loader, schedule, batches, global_batch, lr_rule)
