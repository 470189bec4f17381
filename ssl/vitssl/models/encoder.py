"""The encoder interface every architecture offers, its options, and the capabilities objectives ask for.

Objectives and evaluation use only this surface, so any registered encoder can be pretrained by the
objectives whose needs it meets and handed to fine-tuning, linear probing and kNN.

An architecture declares two classes in its own file: an `EncoderOptions` subclass (its `model:`
section: every option once, with the rules on it) and an `Encoder` subclass built from those
options plus the data's image size and channels. The options are also what a checkpoint stores.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

# What an objective may require beyond the interface below (see Objective.requires).
MASKED_TOKENS = "masked_tokens"  # embed(x) / encode(tokens) on a subset of patch tokens, patch grid (MAE)
CLS_TOKEN = "cls_token"  # a learned CLS token pooled as the image embedding (CLS-token InfoNCE)
CLIPS = "clips"  # encodes clips (B, C, T, H, W) as 3-D tubelets (Video-MAE)
FEATURE_MAP = "feature_map"  # a convolutional feature map a decoder can upsample (CNN autoencoder)
LAYER_IDS = "layer_ids"  # layer_id(param_name) for layer-wise LR decay in fine-tuning
DROP_PATH = "drop_path"  # set_drop_path(rate): stochastic depth in fine-tuning


class EncoderOptions(BaseModel):
    """One architecture's `model:` section. Subclasses set `arch: Literal["<name>"] = "<name>"`, declare
    their options as fields and check every rule between them in validators (ValueError naming the keys)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    arch: str
    init: str = Field("none", description="pretraining: start from these weights (anything finetune.pretrained "
                                          "accepts, timm / mae files and cached timm names included); none")

    # Options a run may change without changing the weights they describe; the weights fix all others.
    run_options: ClassVar[frozenset[str]] = frozenset({"init"})

    def weight_options(self) -> dict:
        """The options the weights fix (arch and sizes): what weights loaded into this encoder must agree with."""
        return self.model_dump(mode="json", exclude=set(self.run_options))

    def check_data(self, image_size: int, channels: int) -> None:
        """The rules that need the data section (ValueError naming data.* and model.* keys)."""


class Encoder(nn.Module):
    """An image (or clip) encoder: tokens out, one pooled embedding per image.

    forward_features(x) -> (B, num_prefix + N, D) tokens; pool(features) -> (B, D), the encoder's own
    image embedding; forward_head(features, pool) is timm's `forward_head(x, pre_logits=True)`: the
    embedding a classifier head takes, pooled the encoder's way ("cls") or as the patch mean ("mean").
    """

    options: EncoderOptions
    num_prefix: int = 0  # leading non-patch tokens in forward_features (1 with a CLS token)

    def __init__(self, options: EncoderOptions, image_size: int, channels: int):
        super().__init__()
        options.check_data(image_size, channels)
        self.options, self.image_size, self.channels = options, image_size, channels

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError

    @property
    def frames(self) -> int:
        """Clip length the encoder takes; 1 for images."""
        return 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape: (C, H, W), or (C, T, H, W) for a clip encoder."""
        t = self.frames
        return (self.channels, *((t,) if t > 1 else ()), self.image_size, self.image_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, num_prefix + N, D) -> (B, D): the mean of the tokens unless the architecture says otherwise."""
        return features.mean(dim=1)

    def forward_head(self, features: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """(B, num_prefix + N, D) -> (B, D): "cls" the encoder's own pooling (the CLS token when it has one),
        "mean" the mean of the patch tokens (MAE fine-tunes this way; its CLS token gets no loss)."""
        if pool == "mean":
            return features[:, self.num_prefix:].mean(dim=1)
        return self.pool(features)

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> what forward_features takes: the same, or clips (B, C, T, H, W) that
        repeat each image T times (a clip encoder classifies an image as a still clip)."""
        t = self.frames
        return images if t == 1 else images.unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()

    def embed_images(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Images (B, C, H, W) -> (B, D) embeddings: the features a probe or a classifier head reads."""
        return self.forward_head(self.forward_features(self.encoder_input(images)), pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> pooled embedding (B, embed_dim)."""
        return self.pool(self.forward_features(x))

