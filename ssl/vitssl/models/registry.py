"""Encoder architectures by name, and the plain-data export that rebuilds any of them.

A checkpoint's `encoder.pt` holds {"arch", "args", "state_dict", ...}; exports written before the
registry existed have no "arch" and are ViTs.
"""
from __future__ import annotations

from torch import nn

from vitssl.models.cnn import CNN, CNNArgs
from vitssl.models.swin import Swin, SwinArgs
from vitssl.models.vit import ViT, ViTArgs

ARCHS: dict[str, tuple[type[nn.Module], type]] = {"vit": (ViT, ViTArgs), "cnn": (CNN, CNNArgs),
                                                  "swin": (Swin, SwinArgs)}


def arch_of(encoder: nn.Module) -> str:
    for name, (cls, _) in ARCHS.items():
        if type(encoder) is cls:
            return name
    raise TypeError(f"{type(encoder).__name__} is not a registered encoder ({sorted(ARCHS)})")


def make_encoder(arch: str, args: dict) -> nn.Module:
    """Rebuild an encoder from its arch name and plain argument dict."""
    if arch not in ARCHS:
        raise ValueError(f"unknown encoder arch {arch!r}; known: {sorted(ARCHS)}")
    cls, args_cls = ARCHS[arch]
    return cls(args_cls(**args))


def encoder_export(encoder: nn.Module) -> dict:
    """Plain data that rebuilds `encoder` exactly: arch, args, CPU state dict."""
    return {"arch": arch_of(encoder), "args": encoder.args.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}


def encoder_from_export(export: dict) -> nn.Module:
    """The encoder an export describes, with fresh weights (load them with load_state_dict)."""
    return make_encoder(export.get("arch", "vit"), export["args"])
