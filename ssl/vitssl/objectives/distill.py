"""Label-free knowledge distillation (Hinton et al. 2015), e.g. into a small Swin student.

The student (any registered encoder + linear head, i.e. a Classify model) learns only from a frozen
teacher's logits: loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean.
`forward` never reads `batch["label"]`.

The teacher is a registered, frozen submodule: it moves with the student, checkpoints and resumes
with the run, and, without gradients, is in no optimizer group and outside DDP's gradient sync (so
find_unused_parameters=False holds). The exported encoder is the student's alone.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vitssl.objectives.base import Batch, Metrics
from vitssl.objectives.classify import Classify, ClassifyOptions


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, K), (B, K) -> scalar T^2 * mean_b KL(p_teacher,b || p_student,b) at temperature T."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class FrozenClassifier(nn.Module):
    """A fine-tuned encoder + linear head, in eval mode for good and without gradients."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, pool: str):
        super().__init__()
        self.encoder, self.head, self.pool = encoder, head, pool
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenClassifier:
        return self  # dropout stays off: the targets must not depend on the student's mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K)."""
        return self.head(self.encoder.embed_images(images, self.pool))


class DistillOptions(ClassifyOptions):
    name: Literal["distill"] = "distill"
    temperature: float = Field(4.0, gt=0)


class Distill(Classify):
    """A Classify student trained on a frozen teacher's soft targets only."""

    Options = DistillOptions

    def __init__(self, encoder: nn.Module, options: DistillOptions, teacher: FrozenClassifier):
        super().__init__(encoder, options)
        if teacher.head.out_features != options.num_classes:
            raise ValueError(f"the teacher predicts {teacher.head.out_features} classes, the student "
                             f"{options.num_classes} (finetune.num_classes)")
        self.teacher = teacher

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        images = batch["image"]
        student = self.logits(images).float()
        teacher = self.teacher(images).float()
        loss = kd_loss(student, teacher, self.options.temperature)
        agreement = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
        return loss, {"loss_kd": loss.detach(), "teacher_agreement": agreement.detach()}
