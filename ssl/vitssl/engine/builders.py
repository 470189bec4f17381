"""Accelerator, optimizer and learning-rate schedule: the pieces every run builds the same way."""
from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from vitssl.config.schema import OptimConfig, RunConfig


def build_accelerator(run: RunConfig) -> Accelerator:
    """One Accelerator for CPU, one GPU, many GPUs or DeepSpeed, as `accelerate launch` set it up.

    Without CUDA we pass cpu=True: only then does `accelerate launch --num_processes 2` form a real
    gloo process group on CPU instead of N processes that each train alone.
    """
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=run.precision,
        gradient_accumulation_steps=run.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )


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
