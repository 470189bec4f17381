"""Readers of webdataset shards: ``python -m data_prep`` folders, HTTP, ``file://`` and ``pipe:`` URLs."""

from vitssl.data.manifest import DataError, load_manifest, verify_split
from vitssl.data.options import DataConfig
from vitssl.data.samples import decode_sample, sample_seed
from vitssl.data.shards import (
    EvalLoader,
    TrainLoader,
    load_split_tensors,
    make_eval_loader,
    make_train_loader,
)
from vitssl.data.sources import split_shards

__all__ = [
    "DataConfig",
    "DataError",
    "EvalLoader",
    "TrainLoader",
    "decode_sample",
    "load_manifest",
    "load_split_tensors",
    "make_eval_loader",
    "make_train_loader",
    "sample_seed",
    "split_shards",
    "verify_split",
]
