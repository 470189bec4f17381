"""DeepSpeed's settings reconciled with the run config: the run config is the one source."""
from __future__ import annotations

from vitssl.config.load import ConfigError

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
