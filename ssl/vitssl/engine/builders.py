"""Accelerator and optimizer: the pieces every run builds the same way."""
from __future__ import annotations

import contextlib
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from vitssl.config.load import ConfigError
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


# DeepSpeed's own copy of what the run config decides, and the run setting that decides it.
DEEPSPEED_FROM_RUN = {"train_micro_batch_size_per_gpu": "data.batch_size",
                      "gradient_accumulation_steps": "run.grad_accum", "gradient_clipping": "run.grad_clip",
                      "train_batch_size": "data.batch_size"}


def fill_deepspeed_config(ds: dict, micro_batch: int | None, grad_accum: int, grad_clip: float | None,
                          world_size: int) -> None:
    """Make the run config the one source of micro-batch, accumulation and clipping under DeepSpeed.

    DeepSpeed would otherwise apply its own values (its clipping replaces run.grad_clip, its
    accumulation replaces run.grad_accum while our schedule counts the run's). "auto" or missing
    values are filled; an explicit value that differs is a ConfigError naming both settings.
    We split the data ourselves and never prepare a DataLoader, so only we know the micro-batch.
    """
    wanted = {"gradient_accumulation_steps": grad_accum, "gradient_clipping": float(grad_clip or 0.0)}
    if micro_batch is not None:
        wanted["train_micro_batch_size_per_gpu"] = micro_batch
        wanted["train_batch_size"] = micro_batch * grad_accum * world_size
    for key, value in wanted.items():
        given = ds.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            setting = DEEPSPEED_FROM_RUN[key]
            raise ConfigError(
                f"DeepSpeed config sets {key}={given} but the run config gives {value} ({setting}"
                f"{' x run.grad_accum x processes' if key == 'train_batch_size' else ''}): set {key} to 'auto' in "
                f"the DeepSpeed config (the run config fills it) or change {setting}")
        ds[key] = value


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in: fp32 (autocast does the rest), or bf16/fp16 when DeepSpeed cast it."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def cast_float_buffers(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """DeepSpeed's bf16/fp16 casts the parameters but not the buffers (fixed position embeddings):
    cast those too, or an fp32 buffer promotes the activations back to fp32 in the middle of the model."""
    for buffer in model.buffers():
        if buffer.is_floating_point() and buffer.dtype != dtype:
            buffer.data = buffer.data.to(dtype)


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


def gathered_parameters(accelerator: Accelerator, model: torch.nn.Module):
    """Whole parameters for a forward outside the DeepSpeed engine (figures): ZeRO-3 gathers a module's
    shards only inside the engine's own forward. Collective: every process must enter. A no-op elsewhere."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return contextlib.nullcontext()
    from deepspeed import zero

    return zero.GatheredParameters(list(model.parameters()))


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
    """AdamW; ``fused``: one kernel for all parameters (on CPU the default per-tensor loop costs
    ~1.5 ms a step for a tiny ViT, 5-10% of its step). DeepSpeed steps its own flattened copy, so
    the caller leaves it off there."""
    return torch.optim.AdamW(param_groups(model, optim.weight_decay, lr_scale), lr=lr, betas=optim.betas,
                             fused=fused or None)
