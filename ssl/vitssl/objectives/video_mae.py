"""Video MAE (Tong et al. 2022; Feichtenhofer et al. 2022) on clips made from image shards.

The encoder is the ViT with model.frames = T and tubelets of t frames (Conv3d patches, 3-D
sin-cos positions). A very high mask ratio (default 0.9) works for video because neighbouring
frames are redundant. Masking:
  tube:   one spatial mask shared by every time slot (VideoMAE), so a masked patch cannot be
          copied from the same place in the next frame;
  random: tokens masked independently over space-time.
The MAE decoder (`drop` style, reused from vitssl.objectives.mae) predicts the masked tubelets'
pixels; the loss is L1 (or L2) on masked tubelets only. Clips come from the per-sample transform
(`clip: repeat | moving`, see vitssl.data.clips).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from vitssl.data.augment import affine_transform, chain
from vitssl.data.clips import MovingClip
from vitssl.models import CLIPS, MASKED_TOKENS, ViT
from vitssl.models.masking import mask_from_noise, num_visible, patchify, tube_noise, unpatchify_clip
from vitssl.objectives.base import Batch, ImageRows, Metrics, Objective, ObjectiveOptions, register
from vitssl.objectives.mae import (
    MAE,
    ReconstructionOptions,
    masked_mean,
    normalise_patches,
    unnormalise_patches,
)


class VideoMAEOptions(ObjectiveOptions, ReconstructionOptions):
    name: Literal["video_mae"] = "video_mae"
    mask_ratio: float = Field(0.9, gt=0, lt=1)  # higher than images': neighbouring frames are redundant
    masking: Literal["tube", "random"] = "tube"
    loss: Literal["l1", "l2"] = "l1"
    clip: Literal["repeat", "moving"] = "moving"
    max_speed: float = Field(2.0, ge=0, description="moving clips: pixels per frame")
    max_spin: float = Field(10.0, ge=0, description="moving clips: degrees per frame")


class ClipAndNoise:
    """Per-sample transform: `clip` (C, T, H, W) and `mask_noise` (N,) in token order."""

    def __init__(self, clip: MovingClip, slots: int, spatial: int, masking: str):
        self.clip, self.slots, self.spatial, self.masking = clip, slots, spatial, masking

    def __call__(self, sample: dict) -> dict:
        sample = self.clip(sample)
        if self.masking == "tube":
            sample["mask_noise"] = tube_noise(torch.rand(1, self.spatial), self.slots)[0]
        else:
            sample["mask_noise"] = torch.rand(self.slots * self.spatial)
        return sample


@register("video_mae")
class VideoMAE(Objective):
    Options = VideoMAEOptions
    requires = frozenset({MASKED_TOKENS, CLIPS})

    def __init__(self, encoder: ViT, options: VideoMAEOptions):
        super().__init__()
        self.options = options
        self.mae = MAE(encoder, options.mae_options())
        self.slots, g = encoder.patch_embed.grid[0], encoder.patch_embed.grid[1]
        self.spatial = g * g

    @property
    def encoder(self) -> ViT:
        return self.mae.encoder

    @classmethod
    def check_config(cls, cfg, options: VideoMAEOptions) -> None:
        from vitssl.config.load import ConfigError

        m = cfg.model
        if m.frames < 2:
            raise ConfigError(f"invalid config: objective video_mae needs model.frames > 1, got {m.frames}")
        spatial = (cfg.data.image_size // m.patch_size) ** 2
        if options.masking == "tube" and num_visible(spatial, options.mask_ratio) == spatial:
            raise ConfigError(f"invalid config: objective.mask_ratio {options.mask_ratio} masks no patch of "
                              f"{spatial} positions")

    def sample_transform(self):
        clip = MovingClip(self.encoder.frames, self.options.clip, self.options.max_speed, self.options.max_spin)
        return chain(affine_transform(self.options), ClipAndNoise(clip, self.slots, self.spatial, self.options.masking))

    def mask(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N) noise -> ids_keep, mask (1 = masked), ids_restore.

        Tube noise repeats each spatial value over the time slots; keeping a whole number of
        spatial positions (all their slots) makes every frame mask the same places.
        """
        ratio = self.options.mask_ratio
        if self.options.masking == "tube":
            ratio = 1 - num_visible(self.spatial, ratio) / self.spatial
        return mask_from_noise(noise, ratio)

    def _noise(self, batch: Batch) -> torch.Tensor:
        noise = batch.get("mask_noise")
        if noise is None:  # figures / callers without the transform
            b, dev = batch["clip"].shape[0], batch["clip"].device
            spatial = torch.rand(b, self.spatial, device=dev)
            noise = tube_noise(spatial, self.slots) if self.options.masking == "tube" else \
                torch.rand(b, self.slots * self.spatial, device=dev)
        return noise

    def target(self, clip: torch.Tensor) -> torch.Tensor:
        o = self.encoder.options
        target = patchify(clip, o.patch_size, o.tubelet).float()
        return normalise_patches(target) if self.options.norm_pix_loss else target

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        clip = batch["clip"]
        ids_keep, mask, ids_restore = self.mask(self._noise(batch))
        pred = self.mae.predict(clip, ids_keep, mask, ids_restore).float()
        err = (pred - self.target(clip)).abs() if self.options.loss == "l1" else (pred - self.target(clip)) ** 2
        loss = masked_mean(err.mean(dim=-1), mask)
        return loss, {"loss_video_mae": loss.detach()}

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, ImageRows]:
        """Middle frame: original, masked, reconstruction, visible + reconstruction."""
        enc, o = self.encoder, self.encoder.options
        clip = batch["clip"][:8]
        ids_keep, mask, ids_restore = self.mask(self._noise({k: v[:8] for k, v in batch.items()}))
        pred = self.mae.predict(clip, ids_keep, mask, ids_restore).float()
        if self.options.norm_pix_loss:
            pred = unnormalise_patches(pred, patchify(clip, o.patch_size, o.tubelet).float())
        unp = lambda t: unpatchify_clip(t, o.patch_size, o.tubelet, enc.channels, enc.frames, enc.image_size)  # noqa: E731
        recon = unp(pred).clamp(0, 1)
        pm = unp(mask[:, :, None].expand(-1, -1, pred.shape[-1]).to(clip.dtype))
        rows = {"original": clip, "masked": clip * (1 - pm) + 0.5 * pm, "reconstruction": recon,
                "visible + reconstruction": clip * (1 - pm) + recon * pm}
        mid = enc.frames // 2
        title = f"Video MAE middle frame ({self.options.masking} masking, ratio {self.options.mask_ratio})"
        return {"reconstruction_middle_frame.png": ImageRows({k: v[:, :, mid] for k, v in rows.items()}, title)}
