"""Pretext objectives by name. Importing the modules registers them."""
from vitssl.objectives import classify, infonce, mae, mae_infonce, video_mae  # noqa: F401
from vitssl.objectives.base import OBJECTIVES, Objective, build_objective, parse_options, register, vit_args

__all__ = ["OBJECTIVES", "Objective", "build_objective", "parse_options", "register", "vit_args"]
