"""Masked autoencoding (He et al. 2021) with three ways of hiding the masked patches.

drop:       the encoder sees only visible patches; the decoder inserts mask tokens (MAE).
mask_token: learned mask tokens replace masked patches before the encoder.
zero:       masked patches are zeroed in pixel space and the encoder sees every patch.
The loss is the MSE on masked patches only, optionally on per-patch normalised pixels.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field

from vitssl.config.augment import AffineOptions
from vitssl.data.augment import affine_transform, chain
from vitssl.models import MASKED_TOKENS, MAEDecoder, ViT
from vitssl.models.masking import mask_from_noise, patchify, unpatchify
from vitssl.objectives.base import Batch, ImageRows, Metrics, Objective, ObjectiveOptions, register


class ReconstructionOptions(AffineOptions):
    """Masking, decoder and augmentation options shared by every masked-reconstruction objective
    (MAE, MAE+InfoNCE, Video-MAE): declared once here, composed into each objective's options.
    `augment` moves each training digit a little before masking: MAE pretrains with random crops
    for the same reason (a few hundred images are otherwise memorised)."""

    model_config = ConfigDict(extra="forbid")
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    norm_pix_loss: bool = False
    decoder_dim: int = Field(64, gt=0)
    decoder_depth: int = Field(2, ge=0)
    decoder_heads: int = Field(4, ge=1)

    def mae_options(self) -> MAEOptions:
        """The drop-style MAE these options describe (the branch MAE+InfoNCE and Video-MAE run)."""
        return MAEOptions(style="drop", **self.model_dump(include=set(ReconstructionOptions.model_fields)))


class MAEOptions(ObjectiveOptions, ReconstructionOptions):
    name: Literal["mae"] = "mae"
    style: Literal["drop", "mask_token", "zero"] = "drop"


class MaskNoise:
    """Per-sample transform: uniform noise whose order decides which patches are masked."""

    reads_pixels = False  # the image may stay uint8 until the device

    def __init__(self, num_patches: int):
        self.num_patches = num_patches

    def __call__(self, sample: dict) -> dict:
        sample["mask_noise"] = torch.rand(self.num_patches)
        return sample


def masked_mean(per_patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, N) per-patch losses over masked patches (mask 1) only."""
    return (per_patch * mask).sum() / mask.sum()


def normalise_patches(target: torch.Tensor) -> torch.Tensor:
    """(B, N, P) patches -> each patch at zero mean, unit variance (MAE's norm_pix_loss target)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1e-6) ** 0.5


def unnormalise_patches(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Predictions of normalise_patches(target) (B, N, P) -> pixel units, with each target patch's statistics."""
    return pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)


@register("mae")
class MAE(Objective):
    Options = MAEOptions
    requires = frozenset({MASKED_TOKENS})

    def __init__(self, encoder: ViT, options: MAEOptions):
        super().__init__()
        self.encoder = encoder
        self.options = options
        grid = encoder.patch_embed.grid
        self.decoder = MAEDecoder(encoder.embed_dim, encoder.num_patches, grid, encoder.patch_dim,
                                  options.decoder_dim, options.decoder_depth, options.decoder_heads)
        if options.style != "drop":
            # Only the drop style fills masked slots in the decoder; a parameter no loss touches
            # would make DDP fail, so the other styles do not create it.
            del self.decoder.mask_token
            self.decoder.mask_token = None
        if options.style == "mask_token":
            self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
            torch.nn.init.trunc_normal_(self.mask_token, std=0.02)

    @classmethod
    def check_config(cls, cfg, options: MAEOptions) -> None:
        from vitssl.config.load import ConfigError

        if cfg.model.frames > 1:
            raise ConfigError("invalid config: objective mae is for images (model.frames 1); use video_mae for clips")

    def sample_transform(self):
        return chain(affine_transform(self.options), MaskNoise(self.encoder.num_patches))

    def _mask(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noise = batch.get("mask_noise")
        if noise is None:
            x = batch["image"]
            noise = torch.rand(x.shape[0], self.encoder.num_patches, device=x.device)
        return mask_from_noise(noise, self.options.mask_ratio)

    def predict(self, x: torch.Tensor, ids_keep, mask, ids_restore) -> torch.Tensor:
        """Images (B, C, H, W) -> predicted patches (B, N, patch_dim)."""
        enc, style = self.encoder, self.options.style
        if style == "drop":
            tokens = enc.embed(x)
            visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            return self.decoder(enc.encode(visible), enc.num_prefix, ids_restore)
        if style == "mask_token":
            feats = enc.encode(enc.embed(x, replace=mask, replace_token=self.mask_token))
        else:
            feats = enc.forward_features(x * (1 - self.pixel_mask(mask, x)))
        return self.decoder(feats, enc.num_prefix)

    def pixel_mask(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, N) patch mask -> (B, 1, H, W) pixel mask."""
        p = self.encoder.options.patch_size
        patches = mask[:, :, None].expand(-1, -1, p * p).to(x.dtype)
        return unpatchify(patches, p, 1, x.shape[-1])

    def loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(x, self.encoder.options.patch_size).float()
        if self.options.norm_pix_loss:
            target = normalise_patches(target)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return masked_mean(per_patch, mask)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        x = batch["image"]
        ids_keep, mask, ids_restore = self._mask(batch)
        pred = self.predict(x, ids_keep, mask, ids_restore)
        loss = self.loss(pred, x, mask)
        return loss, {"loss_mae": loss.detach()}

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, ImageRows]:
        x = batch["image"][:8]
        ids_keep, mask, ids_restore = self._mask({k: v[:8] for k, v in batch.items()})
        pred = self.predict(x, ids_keep, mask, ids_restore).float()
        p, c, size = self.encoder.options.patch_size, x.shape[1], x.shape[-1]
        if self.options.norm_pix_loss:  # show predictions in pixel units
            pred = unnormalise_patches(pred, patchify(x, p).float())
        recon = unpatchify(pred, p, c, size).clamp(0, 1)
        pm = self.pixel_mask(mask, x)
        pasted = x * (1 - pm) + recon * pm
        rows = {"original": x, "masked": x * (1 - pm) + 0.5 * pm, "reconstruction": recon,
                "visible + reconstruction": pasted}
        return {"reconstruction.png": ImageRows(rows, f"MAE {self.options.style}, mask ratio {self.options.mask_ratio}")}
