"""An encoder export made to fit the data: another image size (position embeddings for the new patch
grid) or, from RGB weights to grayscale data, the patch projection's input channels summed."""
from __future__ import annotations

from vitssl.config import ConfigError
from vitssl.export.pos_embed import LEARNED, MAE_SINCOS, resample_grid
from vitssl.models import export_options


def fit_to_data(export: dict, image_size: int, channels: int, source: str) -> tuple[dict, list[str]]:
    """(export rebuilt for image_size x image_size images with `channels` channels, in the options
    layout whatever layout it came in; log lines saying what changed). A ConfigError when it cannot fit."""
    options, size, have = export_options(export)
    state = dict(export["state_dict"])
    notes: list[str] = []
    if have != channels:
        state, note = _adapt_channels(options.arch, state, have, channels, source)
        notes.append(note)
    if size != image_size:
        if options.arch == "vit":
            state, note = _vit_grid(options, size, state, export.get("pos_table", LEARNED), image_size, source)
            notes.append(note)
        else:
            notes.append(f"{options.arch} encoder rebuilt for {image_size}x{image_size} images (was {size}): "
                         f"no absolute position embedding to resample")
    try:
        options.check_data(image_size, channels)
    except ValueError as e:
        raise ConfigError(f"the encoder in {source} does not fit the data: {e}") from None
    fitted = {k: v for k, v in export.items() if k != "args"}
    return fitted | {"arch": options.arch, "model": options.model_dump(mode="json"), "image_size": image_size,
                     "channels": channels, "state_dict": state}, notes


def _vit_grid(options, size: int, state: dict, kind: str, image_size: int, source: str) -> tuple[dict, str]:
    p = options.patch_size
    if image_size % p:
        raise ConfigError(f"data.image_size {image_size} is not divisible by the patch size {p} of the encoder "
                          f"in {source}")
    old, new = size // p, image_size // p
    change = f"{old}x{old} -> {new}x{new} patch grid ({size} -> {image_size} px)"
    if options.pos_embed == "sincos":
        return state, f"position embedding: fixed sin-cos recomputed for the {change}"
    state["pos_embed"] = resample_grid(state["pos_embed"], old, new, kind)
    if kind == MAE_SINCOS:
        return state, f"position embedding: mae's fixed sin-cos table recomputed for the {change}"
    return state, f"position embedding: learned, resampled bicubically for the {change}"


def _adapt_channels(arch: str, state: dict, have: int, want: int, source: str) -> tuple[dict, str]:
    name = {"vit": "patch_embed.proj.weight", "swin": "patch_embed.weight"}.get(arch)
    weight = state.get(name) if name else None
    if weight is None or weight.ndim != 4 or want != 1:
        raise ConfigError(f"the encoder in {source} takes {have}-channel images, data gives {want} "
                          f"(data.channels)")
    # a gray image through summed kernels = the same gray image repeated on every channel (as timm's
    # adapt_input_conv does for in_chans=1)
    state[name] = weight.sum(dim=1, keepdim=True)
    return state, f"patch embedding: its {have} input channels summed for {want}-channel data"
