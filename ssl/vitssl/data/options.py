"""The ``data:`` section of a run config: everything a reader needs that the data decides.

Readers take this section plus what the run decides (rank, world size, accumulation, seed, epoch,
how far into the epoch, the objective's per-sample transform). It lives with the readers, not in
``vitssl.config``, so the data layer imports nothing above it; ``vitssl.config`` re-exports it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    shards: str = "data/mnist012"
    split: str = "train"
    eval_split: str = "test"
    image_size: int = Field(28, gt=0)
    channels: int = Field(1, gt=0)
    batch_size: int = Field(64, gt=0, description="per process")
    num_workers: int = Field(0, ge=0)
    shuffle: bool = True
    shuffle_buffer: int = Field(1000, ge=0)
    check_sha: bool = True
    cache_mb: float = Field(512, ge=0, description="decoded training images of local shards kept in memory "
                            "across epochs, per process, up to this many MiB; 0 = read and decode every epoch")
    streams: int | None = Field(None, ge=1, description="the epoch's canonical partition (divides the global "
                                "batch; keep it fixed to resume on another world size); None: automatic")
    crop: Literal["none", "random_resized", "center"] = Field(
        "none", description="training images: none = as stored (all one size); random_resized = "
        "RandomResizedCrop(image_size, crop_scale, crop_ratio) + flip; center = as evaluation. Evaluation "
        "resizes and centre-crops (eval_crop_pct) whenever crop is not none")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area fraction range of random_resized")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="aspect ratio range of random_resized")
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip probability with random_resized")
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    eval_crop_pct: float = Field(0.875, gt=0, le=1, description="evaluation: resize the shorter side to "
                                 "image_size / eval_crop_pct, then centre-crop image_size")
    reduced_decode: bool = Field(False, description="decode a JPEG at 1/4 or 1/8 scale (DCT scaling, through "
                                 "Pillow) when its crop is at least 4x image_size; measured no faster than "
                                 "torchvision's full decode on ~100 KB photos, so off by default")
    # bounds of every remote (http/https) read: a stalled server ends in one error line, not a hang
    read_min_bytes_per_s: int = Field(1024, ge=1, description="a transfer slower than this for read_stall_s "
                                      "seconds is aborted (and retried)")
    read_stall_s: int = Field(60, ge=1)
    read_deadline_s: int = Field(1800, ge=1, description="all attempts at one shard or manifest together")
    read_retries: int = Field(3, ge=0, description="tries after a transient failure (timeout, broken link, "
                              "HTTP 408/429/5xx)")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {scale}")
        return scale

    @field_validator("crop_ratio")
    @classmethod
    def _ratio(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"must satisfy 0 < low <= high, got {ratio}")
        return ratio
