"""The one interface every pretext objective implements, and the registry that names them.

An objective is an nn.Module that owns its encoder and any heads. Called with a batch (a dict of
tensors from vitssl.data) it returns (loss, metrics). Per-sample randomness (masks, views) is
drawn in `sample_transform`, which runs inside the data workers with the RNG seeded from
(seed, epoch, sample index): runs split over any number of processes see the same randomness.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from vitssl.config.load import ConfigError, format_validation_error
from vitssl.config.schema import PretrainConfig
from vitssl.models import CNNArgs, SwinArgs, ViTArgs, make_encoder

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


class ObjectiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class Objective(nn.Module):
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions
    archs: ClassVar[tuple[str, ...]] = ("vit",)  # the model.arch values this objective can train

    encoder: nn.Module  # a ViT, or any encoder of vitssl.models.ARCHS that `archs` allows

    def sample_transform(self) -> Callable[[dict], dict] | None:
        """A picklable per-sample transform run in the data workers (None: images as they are)."""
        return None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, Any]:
        """Matplotlib figures worth logging for this batch (name.png -> figure)."""
        return {}


OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str):
    def wrap(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        return cls
    return wrap


def parse_options(cfg: PretrainConfig) -> ObjectiveOptions:
    """Validate `objective:` against the named objective's schema; errors name objective.<key>."""
    name = cfg.objective.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"invalid config: objective.name {name!r} is not one of {sorted(OBJECTIVES)}")
    try:
        options = OBJECTIVES[name].Options.model_validate(cfg.objective)
    except ValidationError as e:
        text = format_validation_error(e, f"objective {name}")
        raise ConfigError(text.replace("\n  ", "\n  objective.")) from None
    arch = cfg.model.arch
    if arch not in OBJECTIVES[name].archs:
        raise ConfigError(f"invalid config: objective {name} trains model.arch "
                          f"{' or '.join(OBJECTIVES[name].archs)}, not {arch}")
    check = getattr(OBJECTIVES[name], "check_config", None)
    if check is not None:
        check(cfg, options)
    return options


def vit_args(cfg: PretrainConfig) -> ViTArgs:
    m = cfg.model
    return ViTArgs(img_size=cfg.data.image_size, patch_size=m.patch_size, in_chans=cfg.data.channels,
                   embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                   dropout=m.dropout, attn_dropout=m.attn_dropout, cls_token=m.cls_token,
                   pos_embed=m.pos_embed, frames=m.frames, tubelet=m.tubelet)


def encoder_args(cfg: PretrainConfig) -> ViTArgs | CNNArgs | SwinArgs:
    """The constructor arguments of `model.arch`'s encoder, from the model and data sections."""
    m, d = cfg.model, cfg.data
    if m.arch == "vit":
        return vit_args(cfg)
    if m.arch == "cnn":
        return CNNArgs(img_size=d.image_size, in_chans=d.channels, channels=list(m.cnn_channels), groups=m.cnn_groups)
    return SwinArgs(img_size=d.image_size, in_chans=d.channels, patch_size=m.patch_size, embed_dim=m.embed_dim,
                    depth=m.depth, num_heads=m.num_heads, window_size=m.swin_window, mlp_ratio=m.mlp_ratio,
                    dropout=m.dropout, attn_dropout=m.attn_dropout)


def build_encoder_from_config(cfg: PretrainConfig) -> nn.Module:
    return make_encoder(cfg.model.arch, encoder_args(cfg).to_dict())


def build_objective(cfg: PretrainConfig) -> Objective:
    options = parse_options(cfg)
    return OBJECTIVES[options.name](build_encoder_from_config(cfg), options)
