"""Model FLOPs per training image (the MFU numerator) against a count of the matmuls actually run."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitssl.config import PretrainConfig
from vitssl.engine.flops import train_flops_per_image
from vitssl.objectives import build_objective


def test_mae_formula_matches_the_counted_forward_flops():
    cfg = PretrainConfig.model_validate({
        "data": {"image_size": 64, "channels": 3}, "model": {"patch_size": 8, "embed_dim": 64, "depth": 2,
                                                            "num_heads": 4},
        "objective": {"name": "mae", "decoder_dim": 32, "decoder_depth": 2, "decoder_heads": 4}})
    objective = build_objective(cfg)
    batch = {"image": torch.rand(4, 3, 64, 64), "mask_noise": torch.rand(4, objective.encoder.num_patches)}
    # the math backend: its matmuls are counted, a fused CPU attention kernel is not
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        objective(batch)
    counted = counter.get_total_flops() / 4
    assert abs(train_flops_per_image(objective) / 3 - counted) / counted < 0.05


def test_no_estimate_for_objectives_it_does_not_know():
    cfg = PretrainConfig.model_validate({"objective": {"name": "rotation"}})
    assert train_flops_per_image(build_objective(cfg)) is None
