"""Readers of the shards written by ``python -m data_prep``."""

from vitssl.data.manifest import DataError, load_manifest, verify_split
from vitssl.data.shards import (
    EvalLoader,
    TrainLoader,
    decode_sample,
    load_split_tensors,
    make_eval_loader,
    make_train_loader,
    sample_seed,
)

__all__ = [
    "DataError",
    "EvalLoader",
    "TrainLoader",
    "decode_sample",
    "load_manifest",
    "load_split_tensors",
    "make_eval_loader",
    "make_train_loader",
    "sample_seed",
    "verify_split",
]
