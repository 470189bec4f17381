"""An encoder export made to fit the data: another image size (position embeddings for the new patch
grid) or, from RGB weights to grayscale data, the patch projection's input channels summed."""
from __future__ import annotations

from vitssl.config import ConfigError
from vitssl.export.pos_embed import LEARNED, MAE_SINCOS, resample_grid


def fit_to_data(export: dict, image_size: int, channels: int, source: str) -> tuple[dict, list[str]]:
    """(export rebuilt for image_size x image_size images with `channels` channels, log lines saying what
    changed). A ConfigError when it cannot fit."""
    arch, a = export.get("arch", "vit"), dict(export["args"])
    state = dict(export["state_dict"])
    notes: list[str] = []
    if a["in_chans"] != channels:
        state, note = _adapt_channels(arch, state, a["in_chans"], channels, source)
        a["in_chans"] = channels
        notes.append(note)
    if a["img_size"] != image_size:
        if arch == "vit":
            state, note = _vit_grid(a, state, export.get("pos_table", LEARNED), image_size, source)
            notes.append(note)
        else:
            notes.append(f"{arch} encoder rebuilt for {image_size}x{image_size} images (was {a['img_size']}): "
                         f"no absolute position embedding to resample")
        a["img_size"] = image_size
    return export | {"args": a, "state_dict": state}, notes


def _vit_grid(a: dict, state: dict, kind: str, image_size: int, source: str) -> tuple[dict, str]:
    p = a["patch_size"]
    if image_size % p:
        raise ConfigError(f"data.image_size {image_size} is not divisible by the patch size {p} of the encoder "
                          f"in {source}")
    old, new = a["img_size"] // p, image_size // p
    change = f"{old}x{old} -> {new}x{new} patch grid ({a['img_size']} -> {image_size} px)"
    if a["pos_embed"] == "sincos":
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

