"""Clips from still images: the inputs of video objectives on image shards.

repeat_clip: the image repeated over time (a still clip; also how a clip encoder is
    fine-tuned or probed on single images).
MovingClip: a per-sample transform; the digit translates and rotates smoothly across the frames
    with a random velocity and angular speed drawn from torch's (per-sample seeded) RNG.
"""
from __future__ import annotations

import math

import torch

from vitssl.data.augment import affine_copies


def repeat_clip(image: torch.Tensor, frames: int) -> torch.Tensor:
    """(C, H, W) -> (C, T, H, W), or a batch (B, C, H, W) -> (B, C, T, H, W)."""
    return image.unsqueeze(-3).expand(*image.shape[:-2], frames, *image.shape[-2:]).contiguous()


def moving_clip(image: torch.Tensor, frames: int, velocity: tuple[float, float], spin: float) -> torch.Tensor:
    """(C, H, W) -> (C, T, H, W): frame k is the image shifted by (k - mid) * velocity pixels and
    rotated by (k - mid) * spin degrees about the centre, so the middle frame is the image itself
    (for odd T). Same size as the input: content moved out of the frame is cut off."""
    mid = (frames - 1) / 2
    steps = [k - mid for k in range(frames)]
    clip = affine_copies(image, [s * spin for s in steps], [(s * velocity[0], s * velocity[1]) for s in steps],
                         [1.0] * frames)
    return clip.transpose(0, 1).clamp_(0, 1)


class MovingClip:
    """Per-sample transform: `clip` (C, T, H, W) from `image`.

    mode "repeat": the image T times. mode "moving": speed up to max_speed pixels per frame in a
    uniformly random direction, angular speed uniform in [-max_spin, max_spin] degrees per frame.
    """

    def __init__(self, frames: int, mode: str = "moving", max_speed: float = 2.0, max_spin: float = 10.0):
        self.frames, self.mode, self.max_speed, self.max_spin = frames, mode, max_speed, max_spin

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        if self.mode == "repeat":
            sample["clip"] = repeat_clip(image, self.frames)
            return sample
        speed, direction, spin = torch.rand(3).tolist()
        speed *= self.max_speed
        direction *= 2 * math.pi
        velocity = (speed * math.cos(direction), speed * math.sin(direction))
        sample["clip"] = moving_clip(image, self.frames, velocity, (2 * spin - 1) * self.max_spin)
        return sample
