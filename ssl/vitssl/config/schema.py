"""Typed run configuration: defaults <- YAML file <- dotted command-line overrides.

Every section forbids unknown keys, so a typo is an error naming the key before any work starts.
Objective options are validated by the objective's own schema (see vitssl.objectives).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitssl.data.options import DataConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # optim.lr=.inf is a typo, not a value


class ModelConfig(Section):
    arch: str = Field("vit", description="encoder: one of vitssl.models.ENCODERS (vit, cnn, swin)")
    patch_size: int = Field(7, gt=0, description="vit and swin")
    embed_dim: int = Field(64, gt=0)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    cls_token: bool = True
    pos_embed: Literal["sincos", "learned"] = "sincos"
    frames: int = Field(1, ge=1, description="clip length; 1 = images")
    tubelet: int = Field(1, ge=1, description="frames per tubelet")
    cnn_channels: list[int] = Field([32, 64, 128], min_length=1, description="cnn: width of each conv stage")
    cnn_groups: int = Field(8, ge=1, description="cnn: GroupNorm groups")
    swin_window: int = Field(7, ge=1, description="swin: attention window (tokens per side)")

    @model_validator(mode="after")
    def _arch(self) -> ModelConfig:
        from vitssl.models import ENCODERS

        if self.arch not in ENCODERS:
            raise ValueError(f"model.arch {self.arch!r} is not one of {sorted(ENCODERS)}")
        # A key another architecture owns may be written out (a saved config holds every key) but
        # must keep its default: a changed value would be silently ignored.
        for arch, spec in ENCODERS.items():
            stray = [k for k in spec.own_keys if arch != self.arch
                     and getattr(self, k) != type(self).model_fields[k].get_default(call_default_factory=True)]
            if stray:
                raise ValueError(f"model.{stray[0]} applies to model.arch {arch}, not {self.arch}")
        return self

    def check_fits(self, data: DataConfig) -> None:
        """The architecture's own rules for these model and data sections (ValueError naming the key)."""
        from vitssl.models import encoder_spec

        encoder_spec(self.arch).args_from_config(self, data)


class OptimConfig(Section):
    lr: float | None = Field(None, gt=0, description="absolute LR; when unset, base_lr * global_batch / 256")
    base_lr: float = Field(1.5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class RunConfig(Section):
    name: str = "run"
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop early after this many optimizer steps")
    precision: Literal["no", "fp16", "bf16"] | None = Field(
        None, description="None: take accelerate's setting (--mixed_precision / config file), default no")
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    compile: bool = Field(False, description="torch.compile the model (through accelerate's dynamo backend)")
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints; 0 = each epoch end")
    keep_checkpoints: int = Field(2, ge=1)
    output_dir: str = "runs/{name}"
    resume: str = Field("auto", description="'auto' (latest complete checkpoint, if any), 'never', or a path")
    log_every: int = Field(10, ge=1)
    figure_every: int = Field(10, ge=0, description="epochs between the objective's figures (and after the "
                                                    "last epoch); 0 = none")
    experiment: str = "vitssl"
    run_name: str | None = None
    tracking_uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    tracking_required: bool = Field(True, description="false: a tracking server unreachable at start does not "
                                                      "stop the run; calls are spooled in the output folder")
    parent_run_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    register_as: str | None = Field(None, description="pretraining: register the logged encoder as the next "
                                                      "version of this Model Registry name")
    system_metrics: bool = Field(False, description="log CPU, memory, disk, network (and GPU) usage as system/* "
                                                    "metrics, sampled every 10 s by MLflow's monitor")

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML reads the documented `run.precision=no` as false

    def resolved_output_dir(self) -> str:
        return self.output_dir.format(name=self.name)


class PretrainConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: dict[str, Any] = Field(default_factory=lambda: {"name": "mae"})
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        self.model.check_fits(self.data)
        if "name" not in self.objective:
            raise ValueError("objective.name is required (e.g. mae, infonce, mae_infonce, video_mae)")
        return self
