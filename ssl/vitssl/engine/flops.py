"""Model FLOPs per training image and the device's peak: model FLOP utilisation (MFU) in the log line.

MFU = achieved model FLOP/s / peak FLOP/s (PaLM's definition, nanoGPT's ``estimate_mfu``): model FLOPs
are 3 x the forward's matmul FLOPs (the backward is about twice the forward), counted from the
architecture, not from what the kernels did, so recomputation or padding does not count as useful work.
"""
from __future__ import annotations

import torch

# Peak dense bf16 tensor-core FLOP/s by device name (substring match, first hit wins).
PEAK_BF16 = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H200": 989e12, "H100 PCIe": 756e12,
             "H100": 989e12, "A100": 312e12, "L40S": 362e12, "V100": 125e12}

FORMULA = ("per image, forward, 2 FLOPs a multiply-add, MLP ratio 4: N = (image/patch)^2 patches, "
           "K = visible = int(N (1 - ratio)), P = patch^2 x channels;\n"
           "  patch embed 2 N P d  +  encoder L (24 n d^2 + 4 n^2 d), n = K + 1  +  decoder embed 2 K d d'\n"
           "  + decoder L' (24 N d'^2 + 4 N^2 d')  +  pixel head 2 N d' P;  training = 3 x forward")


def peak_flops(device: torch.device) -> float | None:
    """The device's peak dense bf16 FLOP/s, when its name is in ``PEAK_BF16``; None for CPUs and others."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def blocks_flops(tokens: int, width: int, depth: int) -> float:
    """Forward FLOPs of ``depth`` transformer blocks (MLP ratio 4) on ``tokens`` tokens."""
    return depth * (24 * tokens * width * width + 4 * tokens * tokens * width)


def mae_forward_flops(image: int, channels: int, patch: int, width: int, depth: int, dec_width: int,
                      dec_depth: int, ratio: float) -> float:
    """One image through MAE (drop style): the encoder on the visible patches, the decoder on all (``FORMULA``)."""
    n_patches = (image // patch) ** 2
    keep, p = max(1, int(round(n_patches * (1 - ratio)))), patch ** 2 * channels  # as vitssl.models.masking
    return (2 * n_patches * p * width + blocks_flops(keep + 1, width, depth) + 2 * keep * width * dec_width
            + blocks_flops(n_patches, dec_width, dec_depth) + 2 * n_patches * dec_width * p)


def vit_forward_flops(image: int, channels: int, patch: int, width: int, depth: int) -> float:
    """One image through a ViT encoder on every patch (and a class token)."""
    n_patches = (image // patch) ** 2
    return 2 * n_patches * patch ** 2 * channels * width + blocks_flops(n_patches + 1, width, depth)


def train_flops_per_image(objective: torch.nn.Module) -> float | None:
    """3 x forward FLOPs of one training image, when known: MAE (drop style) and supervised training of a
    single-frame ViT (fine-tuning); None for other objectives and encoders."""
    encoder = getattr(objective, "encoder", None)
    model, options = getattr(encoder, "options", None), getattr(objective, "options", None)
    if getattr(model, "arch", None) != "vit" or model.frames != 1 or options is None:
        return None
    vit = (encoder.image_size, encoder.channels, model.patch_size, model.embed_dim, model.depth)
    name = getattr(options, "name", None)
    if name == "mae" and options.style == "drop":
        return 3 * mae_forward_flops(*vit, options.decoder_dim, options.decoder_depth, options.mask_ratio)
    if name == "classify":
        return 3 * vit_forward_flops(*vit)
    return None
