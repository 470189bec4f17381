"""The encoder interface every architecture offers, and the capabilities objectives can ask for.

Objectives and evaluation use only this surface, so any registered encoder can be pretrained by the
objectives whose needs it meets and handed to fine-tuning, linear probing and kNN.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

# What an objective may require beyond the interface below (see Objective.requires).
MASKED_TOKENS = "masked_tokens"  # embed(x) / encode(tokens) on a subset of patch tokens, patch grid (MAE)
CLS_TOKEN = "cls_token"  # a learned CLS token pooled as the image embedding (CLS-token InfoNCE)
CLIPS = "clips"  # encodes clips (B, C, T, H, W) as 3-D tubelets (Video-MAE)
FEATURE_MAP = "feature_map"  # a convolutional feature map a decoder can upsample (CNN autoencoder)
LAYER_IDS = "layer_ids"  # layer_id(param_name) for layer-wise LR decay in fine-tuning
DROP_PATH = "drop_path"  # set_drop_path(rate): stochastic depth in fine-tuning


@runtime_checkable
class Encoder(Protocol):
    """An image (or clip) encoder: tokens out, one pooled embedding per image."""

    args: Any  # a dataclass of plain constructor arguments with to_dict(): what checkpoints store
    num_prefix: int  # leading non-patch tokens in forward_features (1 with a CLS token, else 0)

    @property
    def embed_dim(self) -> int: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or clips (B, C, T, H, W) -> (B, num_prefix + N, D) tokens."""

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, num_prefix + N, D) -> (B, D): the encoder's own image embedding."""
