"""Encoder architectures by name: the one place that knows which exist and what each supports.

An architecture registers its class with `@register_encoder(name, ...)` in its own file; the
config's allowed `model.arch` values, the objectives' capability checks and the checkpoint export
all read this table. A checkpoint's `encoder.pt` holds {"arch", "args", "state_dict", ...};
exports written before the registry existed have no "arch" and are ViTs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    cls: type[nn.Module]
    args_cls: type
    capabilities: frozenset[str]
    own_keys: tuple[str, ...]  # model.* keys only this architecture reads (an error elsewhere)
    args_from_config: Callable[[Any, Any], Any]  # (model section, data section) -> args; ValueError if bad


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(name: str, args_cls: type, capabilities: set[str] | frozenset[str] = frozenset(),
                     own_keys: tuple[str, ...] = ()):
    """Class decorator. The class defines `args_from_config(model, data) -> args_cls` (a staticmethod)."""
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        ENCODERS[name] = EncoderSpec(cls, args_cls, frozenset(capabilities), own_keys, cls.args_from_config)
        return cls
    return wrap


def encoder_spec(arch: str) -> EncoderSpec:
    if arch not in ENCODERS:
        raise ValueError(f"unknown encoder arch {arch!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[arch]


def arch_of(encoder: nn.Module) -> str:
    for name, spec in ENCODERS.items():
        if type(encoder) is spec.cls:
            return name
    raise TypeError(f"{type(encoder).__name__} is not a registered encoder ({sorted(ENCODERS)})")


def capabilities_of(encoder: nn.Module) -> frozenset[str]:
    return ENCODERS[arch_of(encoder)].capabilities


def make_encoder(arch: str, args: dict) -> nn.Module:
    """Rebuild an encoder from its arch name and plain argument dict."""
    spec = encoder_spec(arch)
    return spec.cls(spec.args_cls(**args))


def encoder_from_config(model, data) -> nn.Module:
    """The encoder a config's `model:` and `data:` sections describe, freshly initialised."""
    spec = encoder_spec(model.arch)
    return spec.cls(spec.args_from_config(model, data))


def encoder_export(encoder: nn.Module) -> dict:
    """Plain data that rebuilds `encoder` exactly: arch, args, CPU state dict."""
    return {"arch": arch_of(encoder), "args": encoder.args.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}


def encoder_from_export(export: dict) -> nn.Module:
    """The encoder an export describes, with fresh weights (load them with load_state_dict)."""
    return make_encoder(export.get("arch", "vit"), export["args"])
