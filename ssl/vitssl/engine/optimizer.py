"""AdamW and its parameter groups: weight decay on >= 2-D weights only, per-parameter LR scales."""
from __future__ import annotations

import torch

from vitssl.config.schema import OptimConfig


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
                    lr_scale: dict[str, float] | None = None, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; ``fused``: one kernel for all parameters (on CPU the default per-tensor loop is a
    noticeable share of a small model's step). DeepSpeed steps its own flattened copy, so the caller
    leaves it off there."""
    return torch.optim.AdamW(param_groups(model, optim.weight_decay, lr_scale), lr=lr, betas=optim.betas,
                             fused=fused or None)
