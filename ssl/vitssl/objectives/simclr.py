"""SimCLR (Chen et al. 2020; the CNN baselines' contrastive one): the InfoNCE objective under its own name.

Same views, projection head and NT-Xent with gathered negatives as `infonce`; registered apart so
that runs of the CNN baseline are told apart from the CLS-token ViT runs in the comparison table.
"""
from __future__ import annotations

from typing import Literal

from vitssl.objectives.base import register
from vitssl.objectives.infonce import ContrastiveOptions, InfoNCE


class SimCLROptions(ContrastiveOptions):
    name: Literal["simclr"] = "simclr"


@register("simclr")
class SimCLR(InfoNCE):
    Options = SimCLROptions
    requires = frozenset()  # any encoder: the pooled embedding, not a CLS token
