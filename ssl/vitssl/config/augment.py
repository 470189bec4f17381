"""Options of the small random affine on training digits: declared once, composed into fine-tuning's
`finetune.augment*` and the masked-reconstruction objectives' `objective.augment*`. The transform
they describe is vitssl.data.augment.affine_transform."""
from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


class AffineOptions(BaseModel):
    augment: bool = Field(False, description="small random affine on training digits")
    augment_degrees: float = Field(10.0, ge=0)
    augment_translate: float = Field(0.1, ge=0, lt=1, description="fraction of the image size")
    augment_scale: tuple[float, float] = (0.9, 1.1)

    @field_validator("augment_scale")
    @classmethod
    def _scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"augment_scale must be 0 < low <= high, got {scale}")
        return scale
