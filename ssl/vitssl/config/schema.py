"""Typed run configuration: defaults <- YAML file <- dotted command-line overrides.

Every section forbids unknown keys, so a typo is an error naming the key before any work starts.
Objective options are validated by the objective's own schema (see vitssl.objectives), model options
by the encoder's (see vitssl.models).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from vitssl.data.options import DataConfig
from vitssl.models import EncoderOptions, ViTOptions, encoder_options


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # optim.lr=.inf is a typo, not a value


# `model:` is the options of the architecture its `arch` names (default vit): each architecture
# declares them, with their rules, in its own file (vitssl.models.vit.ViTOptions, ...).
ModelConfig = Annotated[SerializeAsAny[EncoderOptions], BeforeValidator(encoder_options)]


def check_model_fits(model: EncoderOptions, data: DataConfig) -> None:
    """The architecture's rules that need the data section (ValueError naming the keys)."""
    model.check_data(data.image_size, data.channels)


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
    model: ModelConfig = Field(default_factory=ViTOptions)
    objective: dict[str, Any] = Field(default_factory=lambda: {"name": "mae"})
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        check_model_fits(self.model, self.data)
        if "name" not in self.objective:
            raise ValueError("objective.name is required (e.g. mae, infonce, mae_infonce, video_mae)")
        return self
