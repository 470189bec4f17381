"""MAE and InfoNCE in one step on one encoder (by default 0.8 MAE + 0.2 InfoNCE).

loss = mae_weight * loss_mae + infonce_weight * loss_infonce.

Branches (composed from vitssl.objectives.mae.MAE and infonce.ContrastiveBranch, not copied):
  MAE:      `drop` style on view1: the encoder sees CLS + the visible 25% of view1's patches; the
            decoder reconstructs view1's masked patches from them and the CLS output, as in
            MAE's reference.
  InfoNCE:  the encoder sees all patches of view1 and view2; the pooled CLS of each goes through
            the projection head into NT-Xent (negatives gathered from every process).
Why view1 feeds MAE: MAE's own recipe pretrains on random-resized crops, with 300 training images
the augmentation keeps the reconstruction from memorising, and it costs nothing extra. Set
`mae_input: image` to reconstruct the un-augmented image instead.
The CLS token gets its gradient from InfoNCE (and, through attention, from MAE); every parameter
gets one, as DDP with find_unused_parameters=False needs.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from vitssl.data.views import TwoViews
from vitssl.models import CLS_TOKEN, MASKED_TOKENS, ViT
from vitssl.objectives.base import Batch, Metrics, Objective, register
from vitssl.objectives.infonce import ContrastiveBranch, ContrastiveOptions, check_views
from vitssl.objectives.mae import MAE, MaskNoise, ReconstructionOptions


class MAEInfoNCEOptions(ContrastiveOptions, ReconstructionOptions):
    name: Literal["mae_infonce"] = "mae_infonce"
    mae_weight: float = Field(0.8, ge=0)
    infonce_weight: float = Field(0.2, ge=0)
    mae_input: Literal["view1", "image"] = "view1"


class _Both:
    """Per-sample transform: two views and MAE's mask noise."""

    def __init__(self, views: TwoViews, noise: MaskNoise):
        self.views, self.noise = views, noise

    def __call__(self, sample: dict) -> dict:
        return self.noise(self.views(sample))


@register("mae_infonce")
class MAEInfoNCE(Objective):
    Options = MAEInfoNCEOptions
    requires = frozenset({MASKED_TOKENS, CLS_TOKEN})

    def __init__(self, encoder: ViT, options: MAEInfoNCEOptions):
        super().__init__()
        self.options = options
        self.mae = MAE(encoder, options.mae_options())  # owns the encoder and the decoder
        self.contrastive = ContrastiveBranch(encoder.embed_dim, options)

    @property
    def encoder(self) -> ViT:
        """The one encoder, registered once (under mae.encoder) so checkpoints hold it once."""
        return self.mae.encoder

    @classmethod
    def check_config(cls, cfg, options: MAEInfoNCEOptions) -> None:
        from vitssl.config.load import ConfigError

        check_views(cfg, options.views)
        if options.mae_weight == 0 or options.infonce_weight == 0:
            raise ConfigError("invalid config: objective.mae_weight and objective.infonce_weight must both be > 0 "
                              "(a zero weight leaves parameters without gradient; use objective mae or infonce)")
        if options.augment and options.mae_input == "view1":
            raise ConfigError("invalid config: objective.augment moves the image MAE reconstructs, but "
                              "objective.mae_input view1 is already an augmented view; set mae_input: image "
                              "or leave augment off")

    def sample_transform(self):
        return _Both(TwoViews(self.options.views, self.encoder.image_size), self.mae.sample_transform())

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        o = self.options
        loss_mae, _ = self.mae({"image": batch[o.mae_input], "mask_noise": batch["mask_noise"]})
        loss_infonce, accuracy = self.contrastive(self.encoder, batch["view1"], batch["view2"])
        loss = o.mae_weight * loss_mae + o.infonce_weight * loss_infonce
        return loss, {"loss_mae": loss_mae.detach(), "loss_infonce": loss_infonce.detach(),
                      "contrastive_acc": accuracy.detach()}

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict:
        return self.mae.figures({"image": batch[self.options.mae_input], "mask_noise": batch["mask_noise"]})
