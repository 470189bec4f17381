"""MAE + InfoNCE: (d) the loss is exactly the configured weighted sum of its logged parts, every
parameter gets a gradient, the shared encoder is stored once, and (f) the loss falls end to end."""
from __future__ import annotations

import pytest
import torch

from vitssl.config import PretrainConfig
from vitssl.config.load import ConfigError, build_config
from vitssl.objectives import build_objective, parse_options

from launching import client, last_lines, launch, metric


def cfg(**objective) -> PretrainConfig:
    return build_config(PretrainConfig, {
        "model": {"patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "objective": {"name": "mae_infonce", **objective}})


def batch_for(objective, n=8):
    transform = objective.sample_transform()
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        torch.manual_seed(i)
        samples.append(transform({"image": torch.rand(1, 28, 28, generator=g)}))
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


@pytest.mark.parametrize("mae_input", ["view1", "image"])
def test_loss_is_the_weighted_sum_of_the_parts(mae_input):
    obj = build_objective(cfg(mae_weight=0.35, infonce_weight=1.7, mae_input=mae_input))
    batch = batch_for(obj)
    loss, m = obj(batch)
    assert loss.item() == (0.35 * m["loss_mae"] + 1.7 * m["loss_infonce"]).item()
    # The parts are the composed objectives' own losses on the same inputs.
    mae_alone, _ = obj.mae({"image": batch[mae_input], "mask_noise": batch["mask_noise"]})
    assert mae_alone.item() == m["loss_mae"].item()
    loss.backward()
    no_grad = [n for n, p in obj.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, no_grad  # DDP runs with find_unused_parameters=False


def test_one_encoder_stored_once():
    obj = build_objective(cfg())
    keys = list(obj.state_dict())
    assert obj.encoder is obj.mae.encoder
    assert not any(k.startswith("encoder.") for k in keys) and any(k.startswith("mae.encoder.") for k in keys)


def test_zero_weight_is_rejected():
    with pytest.raises(ConfigError, match="mae_weight"):
        parse_options(cfg(infonce_weight=0))


def test_augment_needs_the_unaugmented_input():
    """view1 is already augmented: moving the image MAE does not read would be a silent no-op."""
    with pytest.raises(ConfigError, match="mae_input"):
        parse_options(cfg(augment=True))
    assert parse_options(cfg(augment=True, mae_input="image")).augment


@pytest.mark.slow
def test_mae_infonce_loss_falls(mnist012, tmp_path):
    out = launch("pretrain.py", "configs/mnist012/mae_infonce.yaml",
                 [f"data.shards={mnist012}", f"run.output_dir={tmp_path}/run",
                  f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "run.epochs=3", "optim.warmup_epochs=1",
                  "optim.lr=2e-3"], tmp_path)
    mlc = client(tmp_path)
    run_id = last_lines(out)["mlflow run id"]
    assert mlc.get_run(run_id).info.status == "FINISHED"
    for key in ("epoch_loss", "epoch_loss_mae", "epoch_loss_infonce"):
        assert len(metric(mlc, run_id, key)) == 3
    losses = metric(mlc, run_id, "epoch_loss")
    assert losses[-1] < losses[0], losses
