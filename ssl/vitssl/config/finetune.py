"""Typed configuration of a fine-tune / linear-probe / kNN evaluation run.

The data, optim and run sections are the pretraining ones; `model:` is used only when
`finetune.pretrained: none` (training from scratch): otherwise the encoder is rebuilt from the
arguments saved in the checkpoint, so a fine-tune can never silently change the architecture.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vitssl.config.augment import AffineOptions
from vitssl.config.schema import DataConfig, ModelConfig, OptimConfig, RunConfig, Section, check_model_fits
from vitssl.models import DROP_PATH, LAYER_IDS, ViTOptions, encoder_spec


class HeadOptions(Section, AffineOptions):
    """The classifier head and its training-time regularisation: declared once, shared by the
    `finetune:` section and the classify/distill objectives."""

    num_classes: int = Field(3, ge=2)
    pool: Literal["cls", "mean"] = Field(
        "cls", description="embedding for every mode: the CLS token (mean of patches without one) or the patch mean")
    head_dropout: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    randaugment: bool = Field(False, description="torchvision RandAugment on the uint8 training digits")
    randaugment_ops: int = Field(2, ge=1)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    mixup_alpha: float = Field(0.0, ge=0, description="Mixup of images and labels, lambda ~ Beta(a, a); 0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix, box area ~ Beta(a, a); with Mixup on, one of the "
                                "two per batch at even odds; 0 = off")

    def head_options(self) -> dict:
        return self.model_dump(include=set(HeadOptions.model_fields))


class FinetuneOptions(HeadOptions):
    pretrained: str = Field(
        "none", description="runs:/<run_id>[/path], models:/<name>/<version|alias>, models:/<model_id>, an "
                            "MLflow run id (all downloaded through MLflow), a checkpoint folder, a pretrain "
                            "output dir (its latest checkpoint), or none (from scratch with `model:`)")
    mode: Literal["finetune", "linear", "knn"] = "finetune"
    class_names: list[str] | None = Field(None, description="display names; default the label numbers")
    eval_splits: list[str] | None = Field(
        None, min_length=1, description="splits to evaluate at the end (metrics <split>_accuracy, ...); "
                                        "None = [data.eval_split]")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise LR decay; None = off")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth while fine-tuning, rising linearly "
                                                          "over the blocks to this rate at the last; 0 = off")
    head_init: Literal["random", "probe"] = Field(
        "random", description="fine-tune head start: random, or the linear probe fitted on the frozen "
                              "encoder's features first (LP-FT, Kumar et al. 2022)")
    # label-free distillation: the loss is KL to a frozen teacher's logits, no label enters it
    teacher: str = Field("none", description="a fine-tuned classifier (named as `pretrained` is), or none")
    distill_temperature: float = Field(4.0, gt=0)
    # linear probe (frozen features, standardised, full-batch AdamW on a linear head)
    linear_steps: int = Field(300, ge=1)
    linear_lr: float = Field(0.01, gt=0)
    linear_weight_decay: float = Field(1e-3, ge=0)
    # kNN on frozen features
    knn_k: int = Field(20, ge=1)
    knn_temperature: float | None = Field(
        0.07, gt=0, description="votes weighted by exp(cos / T) as in DINO; None = majority vote")
    tsne: bool = Field(True, description="t-SNE of the test embeddings (a few seconds)")


    def splits(self, data: DataConfig) -> list[str]:
        return self.eval_splits or [data.eval_split]


class FinetuneConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ViTOptions)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    finetune: FinetuneOptions = Field(default_factory=FinetuneOptions)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        names = self.finetune.class_names
        if names is not None and len(names) != self.finetune.num_classes:
            raise ValueError(f"finetune.class_names has {len(names)} names for finetune.num_classes "
                             f"{self.finetune.num_classes}")
        ft = self.finetune
        if ft.teacher != "none" and (ft.mode != "finetune" or ft.mixup_alpha > 0 or ft.cutmix_alpha > 0):
            raise ValueError("finetune.teacher (distillation) needs finetune.mode finetune and no Mixup "
                             f"(got mode {ft.mode}, mixup_alpha {ft.mixup_alpha})")
        if ft.pretrained == "none":
            check_model_fits(self.model, self.data)
            capabilities = encoder_spec(self.model.arch).capabilities
            if ft.layer_decay and LAYER_IDS not in capabilities:
                raise ValueError(f"finetune.layer_decay needs an encoder with layer ids; model.arch "
                                 f"{self.model.arch} has none")
            if ft.drop_path and DROP_PATH not in capabilities:
                raise ValueError(f"finetune.drop_path needs an encoder with residual blocks to drop; "
                                 f"model.arch {self.model.arch} has none (use 0)")
        return self
