"""The per-step hook: an objective with an EMA target (BYOL/DINO style) updates it after every
optimizer step, and the target checkpoints and resumes with the run exactly."""
from __future__ import annotations

import copy
import os
import signal
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file
from torch import nn

from vitssl.config import PretrainConfig, load_config
from vitssl.engine.pretrain import run_pretrain
from vitssl.objectives.base import OBJECTIVES, Objective, ObjectiveOptions, register

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # three short training runs


class EMATestOptions(ObjectiveOptions):
    name: Literal["ema_test"] = "ema_test"
    momentum: float = Field(0.9, gt=0, lt=1)
    stop_at_step: int = 0  # > 0: raise SIGTERM in this process after that step (an interruption)


class EMATest(Objective):
    """Regress the student's embedding onto an EMA copy of the encoder (a minimal BYOL)."""

    Options = EMATestOptions

    def __init__(self, encoder: nn.Module, options: EMATestOptions):
        super().__init__()
        self.encoder, self.options = encoder, options
        self.predictor = nn.Linear(encoder.embed_dim, encoder.embed_dim)
        self.target = copy.deepcopy(encoder).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        x = batch["image"]
        online = self.predictor(self.encoder(x))
        with torch.no_grad():
            target = self.target(x)
        loss = (online - target).pow(2).mean()
        return loss, {"loss_ema": loss.detach()}

    @torch.no_grad()
    def after_step(self, step: int, progress: float) -> None:
        for t, s in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
            t.lerp_(s, 1 - self.options.momentum)
        self.updates += 1
        if step == self.options.stop_at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler turns it into a checkpointed stop


@pytest.fixture
def ema_objective():
    register("ema_test")(EMATest)
    yield
    OBJECTIVES.pop("ema_test")


def config(shards: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, ROOT / "configs/mnist012/mae.yaml", [
        f"data.shards={shards}", f"run.output_dir={out}", f"run.tracking_uri=sqlite:///{out.parent}/mlflow.db",
        "objective={name: ema_test}", "model.depth=1", "model.embed_dim=32", "data.batch_size=32",
        "run.epochs=2", "run.log_every=1", "run.figure_every=0", *extra])


def final_state(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.checkpoint / "model.safetensors"))


def test_ema_target_updates_every_step_and_resumes_exactly(mnist012, tmp_path, ema_objective):
    full = run_pretrain(config(mnist012, tmp_path / "full"))
    steps = full.state.step
    want = final_state(full)
    assert int(want["updates"]) == steps == 2 * 9
    assert not torch.equal(want["target.blocks.0.attn.qkv.weight"], want["encoder.blocks.0.attn.qkv.weight"])

    cut = run_pretrain(config(mnist012, tmp_path / "cut", "objective.stop_at_step=5"))
    assert cut.interrupted and cut.state.step == 5 and int(final_state(cut)["updates"]) == 5
    resumed = run_pretrain(config(mnist012, tmp_path / "cut", "objective.stop_at_step=5"))
    assert not resumed.interrupted and resumed.state.step == steps
    got = final_state(resumed)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
