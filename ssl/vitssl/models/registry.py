"""Encoder architectures by name: the one place that knows which exist and what each supports.

An architecture registers its class with `@register_encoder(TheOptions, capabilities)` in its own
file; the name is its options' `arch`. The config's `model:` section is validated as the options of
the arch it names, objectives check capabilities here, and a checkpoint's `encoder.pt` stores the
options (see encoder_export), so it is rebuilt from exactly what the config declared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitssl.models.encoder import Encoder, EncoderOptions

DEFAULT_ARCH = "vit"


@dataclass(frozen=True)
class EncoderSpec:
    cls: type[Encoder]
    options: type[EncoderOptions]
    capabilities: frozenset[str]


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(options: type[EncoderOptions], capabilities: set[str] | frozenset[str] = frozenset()):
    """Class decorator on an Encoder subclass built as `cls(options, image_size, channels)`."""
    def wrap(cls: type[Encoder]) -> type[Encoder]:
        ENCODERS[options.model_fields["arch"].default] = EncoderSpec(cls, options, frozenset(capabilities))
        return cls
    return wrap


def encoder_spec(arch: str) -> EncoderSpec:
    if not isinstance(arch, str) or arch not in ENCODERS:
        raise ValueError(f"model.arch {arch!r} is not one of {sorted(ENCODERS)}")
    return ENCODERS[arch]


def arch_of(encoder: Encoder) -> str:
    return encoder.options.arch


def capabilities_of(encoder: Encoder) -> frozenset[str]:
    return encoder_spec(arch_of(encoder)).capabilities


def encoder_options(section: Any) -> EncoderOptions:
    """A `model:` mapping validated as the options of the arch it names (default vit).

    A key another architecture declares is named as such: it would otherwise be silently meaningless.
    """
    if isinstance(section, EncoderOptions):
        return section
    if not isinstance(section, dict):
        raise ValueError(f"model must be a mapping of options (model.arch, ...), got {section!r}")
    arch = section.get("arch", DEFAULT_ARCH)
    options = encoder_spec(arch).options
    for key in section:
        owners = sorted(a for a, spec in ENCODERS.items() if key in spec.options.model_fields)
        if key not in options.model_fields and owners:
            raise ValueError(f"model.{key} applies to model.arch {' and '.join(owners)}, not {arch}")
    return options.model_validate(section)


def build_encoder(options: EncoderOptions, image_size: int, channels: int) -> Encoder:
    """A freshly initialised encoder for images of `channels` x `image_size` x `image_size`."""
    return encoder_spec(options.arch).cls(options, image_size, channels)


def make_encoder(arch: str = DEFAULT_ARCH, image_size: int = 28, channels: int = 1, **options: Any) -> Encoder:
    """build_encoder from keyword options: make_encoder("vit", depth=2)."""
    return build_encoder(encoder_options({"arch": arch, **options}), image_size, channels)


def encoder_from_config(model: EncoderOptions, data: Any) -> Encoder:
    """The encoder a config's `model:` and `data:` sections describe, freshly initialised."""
    return build_encoder(model, data.image_size, data.channels)


def encoder_export(encoder: Encoder) -> dict:
    """Plain data that rebuilds `encoder` exactly: its options, input size, CPU state dict."""
    return {"arch": arch_of(encoder), "model": encoder.options.model_dump(mode="json"),
            "image_size": encoder.image_size, "channels": encoder.channels,
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}


# Exports that hold constructor arguments ("args") instead of options, and perhaps no "arch" (a ViT),
# name three options and the input size differently.
_ARGUMENT_NAMES = {"window_size": "swin_window", "channels": "cnn_channels", "groups": "cnn_groups"}


def export_options(export: dict) -> tuple[EncoderOptions, int, int]:
    """(options, image_size, channels) an export was made with: the one reader of every export layout.
    KeyError/ValueError when `export` is not an encoder export."""
    if "model" in export:
        return encoder_options(export["model"]), int(export["image_size"]), int(export["channels"])
    args = dict(export["args"])
    size, channels = args.pop("img_size", 28), args.pop("in_chans", 1)
    options = {_ARGUMENT_NAMES.get(k, k): v for k, v in args.items()}
    return encoder_options({"arch": export.get("arch", DEFAULT_ARCH), **options}), int(size), int(channels)


def encoder_from_export(export: dict) -> Encoder:
    """The encoder an export describes, with fresh weights (load them with load_state_dict)."""
    return build_encoder(*export_options(export))
