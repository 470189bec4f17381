"""Pretext objectives by name. Importing the modules registers them."""
from vitssl.objectives import (  # noqa: F401
    classify,
    cnn_autoencoder,
    infonce,
    mae,
    mae_infonce,
    rotation,
    simclr,
    video_mae,
)
from vitssl.objectives.base import OBJECTIVES, Objective, build_objective, parse_options, register

__all__ = ["OBJECTIVES", "Objective", "build_objective", "parse_options", "register"]
