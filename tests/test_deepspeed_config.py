"""The run config is the one source of micro-batch, accumulation and clipping under DeepSpeed: it fills
DeepSpeed's "auto" (or missing) values, and a DeepSpeed value that disagrees is one clear error."""
from __future__ import annotations

import pytest

from vitssl.config import ConfigError
from vitssl.engine.deepspeed_config import fill_deepspeed_config


def accelerate_default() -> dict:
    """What accelerate builds from a config file's deepspeed_config section that leaves these keys out."""
    return {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}


def test_auto_values_are_filled_from_the_run_config():
    ds = accelerate_default()
    fill_deepspeed_config(ds, micro_batch=8, grad_accum=3, grad_clip=0.5, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["train_batch_size"] == 8 * 3 * 2


def test_no_clipping_in_the_run_means_none_in_deepspeed():
    ds = accelerate_default()
    fill_deepspeed_config(ds, micro_batch=8, grad_accum=1, grad_clip=None, world_size=1)
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed clips only when > 0


def test_equal_explicit_values_are_accepted():
    ds = accelerate_default() | {"gradient_clipping": 1.0, "gradient_accumulation_steps": 2,
                                 "train_micro_batch_size_per_gpu": 4, "train_batch_size": 16}
    fill_deepspeed_config(ds, micro_batch=4, grad_accum=2, grad_clip=1.0, world_size=2)
    assert ds["gradient_clipping"] == 1.0 and ds["train_batch_size"] == 16


@pytest.mark.parametrize("key, value, run_key", [
    ("gradient_clipping", 0.3, "run.grad_clip"),
    ("gradient_accumulation_steps", 4, "run.grad_accum"),
    ("train_micro_batch_size_per_gpu", 16, "data.batch_size"),
    ("train_batch_size", 64, "data.batch_size"),
])
def test_a_conflicting_deepspeed_value_is_one_error_naming_both_settings(key, value, run_key):
    ds = accelerate_default() | {key: value}
    with pytest.raises(ConfigError) as err:
        fill_deepspeed_config(ds, micro_batch=8, grad_accum=1, grad_clip=1.0, world_size=2)
    message = str(err.value)
    assert "\n" not in message
    assert key in message and run_key in message and str(value) in message
