"""This project's encoders in timm's terms: which timm model rebuilds them, with which arguments and
weight names, and the way back from a timm (or mae) state dict to ours.

ViT: every weight name already equals timm's `VisionTransformer`; the position table has no class
row (`no_embed_class=True`) and the final norm is applied per token before pooling (`fc_norm=False`).
Swin: torchvision's blocks equal timm's `SwinTransformer` with one stage of blocks and a second stage
of depth 0 holding the patch merge. The CNN and clip (tubelet) ViTs have no timm equivalent.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from vitssl.models import SwinOptions, ViTOptions, export_options
from vitssl.models.layers import sincos_pos_embed


class NoTimmEquivalent(ValueError):
    """The encoder has no timm model that computes the same function; the message says why."""


VIT_ENTRY = "vit_base_patch16_224"  # any timm ViT entry point: the model arguments set every size
SWIN_ENTRY = "swin_tiny_patch4_window7_224"
VIT_SIZES = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224", 768: "vit_base_patch16_224",
             1024: "vit_large_patch16_224", 1280: "vit_huge_patch14_224"}


@dataclass
class TimmModel:
    architecture: str  # a timm.create_model name
    model_args: dict  # keyword arguments that make it this encoder
    state_dict: dict[str, torch.Tensor]  # in timm's key layout
    label_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def _vit(o: ViTOptions, size: int, chans: int, state: dict, head: dict | None, pool: str) -> TimmModel:
    if o.frames > 1:
        raise NoTimmEquivalent(f"a clip ViT (frames {o.frames}, tubelet {o.tubelet}: 3-D tubelet patches) "
                               f"has no timm equivalent; use the vitssl encoder.pt")
    state = dict(state)
    if o.pos_embed == "sincos":  # a buffer the export omits: timm gets the actual table as its parameter
        grid = size // o.patch_size
        state["pos_embed"] = sincos_pos_embed(o.embed_dim, (1, grid, grid))[None]
    global_pool = "token" if o.cls_token and pool == "cls" else "avg"
    args = dict(img_size=size, patch_size=o.patch_size, in_chans=chans, embed_dim=o.embed_dim, depth=o.depth,
                num_heads=o.num_heads, mlp_ratio=o.mlp_ratio, class_token=o.cls_token, no_embed_class=True,
                fc_norm=False, global_pool=global_pool, num_classes=0)
    if head is not None:
        state |= {f"head.{k}": v for k, v in head.items()}
        args["num_classes"] = head["weight"].shape[0]
    return TimmModel(VIT_SIZES.get(o.embed_dim, VIT_ENTRY), args, state)


def swin_to_timm_key(key: str) -> str:
    key = re.sub(r"^patch_embed\.", "patch_embed.proj.", key).replace("embed_norm.", "patch_embed.norm.")
    key = re.sub(r"^blocks\.", "layers.0.blocks.", key).replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
    return re.sub(r"^merge\.", "layers.1.downsample.", key)


def _swin(o: SwinOptions, size: int, chans: int, state: dict, head: dict | None) -> TimmModel:
    grid = size // o.patch_size
    if grid % o.swin_window and o.swin_window < grid:
        raise NoTimmEquivalent(f"a swin encoder whose window ({o.swin_window}) does not divide its token grid "
                               f"({grid}) pads differently from timm's; use the vitssl encoder.pt")
    state = {swin_to_timm_key(k): v for k, v in state.items()
             if not k.endswith("relative_position_index")}  # a constant timm rebuilds itself
    args = dict(img_size=size, patch_size=o.patch_size, in_chans=chans, embed_dim=o.embed_dim,
                depths=[o.depth, 0], num_heads=[o.num_heads, 2 * o.num_heads], window_size=o.swin_window,
                mlp_ratio=o.mlp_ratio, global_pool="avg", num_classes=0)
    if head is not None:
        state |= {f"head.fc.{k}": v for k, v in head.items()}
        args["num_classes"] = head["weight"].shape[0]
    return TimmModel(SWIN_ENTRY, args, state,
                     notes=["swin: one stage of blocks, then the patch merge as a second stage of depth 0"])


def to_timm(export: dict) -> TimmModel:
    """The timm model, arguments and state dict for a vitssl export (with its classifier head, if any)."""
    options, size, chans = export_options(export)
    state, head = export["state_dict"], export.get("head")
    pool = ((export.get("config") or {}).get("finetune") or {}).get("pool", "cls")
    if isinstance(options, ViTOptions):
        return _vit(options, size, chans, state, head, pool)
    if isinstance(options, SwinOptions):
        return _swin(options, size, chans, state, head)
    raise NoTimmEquivalent(f"a {options.arch} encoder has no timm equivalent (timm has no model with this "
                           f"architecture's layers); use the vitssl encoder.pt")
