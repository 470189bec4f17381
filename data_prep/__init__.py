"""Turn MNIST / Tiny ImageNet into checksummed webdataset shards plus a manifest.

Run as ``python -m data_prep {mnist,tiny-imagenet,summary} ...``; readers live in ``vitssl.data``.
"""

from data_prep.errors import DataPrepError

__all__ = ["DataPrepError"]
