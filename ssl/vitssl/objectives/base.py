"""The one interface every pretext objective implements, and the registry that names them.

An objective is an nn.Module that owns its encoder and any heads. Called with a batch (a dict of
tensors from vitssl.data) it returns (loss, metrics). Per-sample randomness (masks, views) is
drawn in `sample_transform`, which runs inside the data workers with the RNG seeded from
(seed, epoch, sample index): runs split over any number of processes see the same randomness.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from vitssl.config.load import ConfigError, format_validation_error
from vitssl.config.schema import PretrainConfig
from vitssl.models import ENCODERS, Encoder, encoder_from_config

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


@dataclass
class ImageRows:
    """A figure as data: labelled rows of images, each (N, C, H, W) in [0, 1], under a title."""

    rows: dict[str, torch.Tensor]
    title: str = ""


class ObjectiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class Objective(nn.Module):
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions
    # Encoder capabilities (vitssl.models.encoder) this objective needs; the registry says which
    # architectures have them.
    requires: ClassVar[frozenset[str]] = frozenset()

    encoder: Encoder

    def sample_transform(self) -> Callable[[dict], dict] | None:
        """A picklable per-sample transform run in the data workers (None: images as they are)."""
        return None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def after_step(self, step: int, progress: float) -> None:
        """Called after every optimizer step with the number of steps done and the fraction of the
        schedule done (0..1]: the place for EMA targets, momentum or temperature schedules. State kept
        here must live in registered modules or buffers, so it checkpoints and resumes with the run."""

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, ImageRows]:
        """What is worth drawing for this batch (name.png -> rows of images); the tracker draws them."""
        return {}


OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str):
    def wrap(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        return cls
    return wrap


def archs_with(capabilities: frozenset[str]) -> list[str]:
    return sorted(a for a, spec in ENCODERS.items() if capabilities <= spec.capabilities)


def parse_options(cfg: PretrainConfig) -> ObjectiveOptions:
    """Validate `objective:` against the named objective's schema; errors name objective.<key>."""
    name = cfg.objective.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"invalid config: objective.name {name!r} is not one of {sorted(OBJECTIVES)}")
    objective = OBJECTIVES[name]
    try:
        options = objective.Options.model_validate(cfg.objective)
    except ValidationError as e:
        text = format_validation_error(e, f"objective {name}")
        raise ConfigError(text.replace("\n  ", "\n  objective.")) from None
    arch = cfg.model.arch
    missing = objective.requires - ENCODERS[arch].capabilities
    if missing:
        raise ConfigError(f"invalid config: objective {name} needs an encoder with {', '.join(sorted(missing))}; "
                          f"model.arch {arch} has none (use {' or '.join(archs_with(objective.requires))})")
    check = getattr(objective, "check_config", None)
    if check is not None:
        check(cfg, options)
    return options


def build_objective(cfg: PretrainConfig) -> Objective:
    options = parse_options(cfg)
    return OBJECTIVES[options.name](encoder_from_config(cfg.model, cfg.data), options)
