"""Contrastive learning on the encoder's pooled embedding (CLS, or mean of patches without one):
SimCLR's symmetric NT-Xent (Chen et al. 2020), with negatives gathered from every process.

For N anchors pairs (2N views) each anchor's positive is the other view of its image and its
negatives are the other 2N - 2 views; the loss is the cross-entropy of the positive among the
2N - 1 candidates at cosine similarity / temperature. With `gather` the candidates come from all
processes (N = world * local batch) while each process scores only its own anchors; see
vitssl.objectives.gather for why this gives the 1-process gradient.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vitssl.data.views import TwoViews, ViewOptions
from vitssl.models import CLS_TOKEN, Encoder
from vitssl.objectives.base import Batch, ImageRows, Metrics, Objective, ObjectiveOptions, register
from vitssl.objectives.gather import gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric NT-Xent of this process's anchors. z1, z2: (B, E) L2-normalised views.

    Candidates: [all z1 ; all z2] (2WB rows, W processes when gathering). Returns (mean loss over
    the 2B local anchors, top-1 accuracy: fraction whose positive scores highest).
    """
    b = z1.shape[0]
    offset = rank() * b if gather else 0
    a1, a2 = (gather_with_grad(z1), gather_with_grad(z2)) if gather else (z1, z2)
    n = a1.shape[0]  # W*B (gathered) or B
    candidates = torch.cat([a1, a2])  # (2n, E)
    anchors = torch.cat([z1, z2])  # (2B, E): rows offset+i of candidates and n+offset+i
    dtype = torch.promote_types(z1.dtype, torch.float32)  # similarities in fp32 (or fp64) even under autocast
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits = anchors.to(dtype) @ candidates.to(dtype).T / temperature
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")  # an anchor is not its own candidate
    loss = F.cross_entropy(logits, pos_idx)
    accuracy = (logits.argmax(dim=1) == pos_idx).float().mean()
    return loss, accuracy


class ProjectionHead(nn.Module):
    """Linear - GELU - Linear: (B, D) -> (B, out_dim). No BatchNorm, so no cross-rank statistics."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContrastiveOptions(ObjectiveOptions):
    """Options shared by infonce and mae_infonce."""

    temperature: float = Field(0.2, gt=0)
    proj_hidden_dim: int = Field(256, gt=0)
    proj_dim: int = Field(64, gt=0)
    gather: bool = Field(True, description="negatives from every process (false: this process's batch only)")
    views: ViewOptions = Field(default_factory=ViewOptions)


class ContrastiveBranch(nn.Module):
    """Pooled encoder embeddings of the two views -> projection -> NT-Xent. Owns only the head;
    the encoder is passed in so objectives that share it do not register it twice."""

    def __init__(self, embed_dim: int, options: ContrastiveOptions):
        super().__init__()
        self.options = options
        self.head = ProjectionHead(embed_dim, options.proj_hidden_dim, options.proj_dim)

    def forward(self, encoder: Encoder, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One encoder pass over both views: half the kernel launches of two passes.
        pooled = encoder(torch.cat([view1, view2]))
        z = F.normalize(self.head(pooled).float(), dim=-1)
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.options.temperature, self.options.gather)


class InfoNCEOptions(ContrastiveOptions):
    name: Literal["infonce"] = "infonce"


@register("infonce")
class InfoNCE(Objective):
    Options = InfoNCEOptions
    requires = frozenset({CLS_TOKEN})

    def __init__(self, encoder: Encoder, options: InfoNCEOptions):
        super().__init__()
        self.encoder = encoder
        self.options = options
        self.contrastive = ContrastiveBranch(encoder.embed_dim, options)

    @classmethod
    def check_config(cls, cfg, options: InfoNCEOptions) -> None:
        check_views(cfg, options.views)

    def sample_transform(self):
        return TwoViews(self.options.views, self.encoder.image_size)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        loss, accuracy = self.contrastive(self.encoder, batch["view1"], batch["view2"])
        return loss, {"loss_infonce": loss.detach(), "contrastive_acc": accuracy.detach()}

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, ImageRows]:
        return {"views.png": views_figure(batch)}


def check_views(cfg, views: ViewOptions) -> None:
    from vitssl.config.load import ConfigError

    if getattr(cfg.model, "frames", 1) > 1:
        raise ConfigError("invalid config: contrastive objectives are for images (model.frames 1)")
    if views.preset == "color" and cfg.data.channels != 3:
        raise ConfigError(f"invalid config: objective.views.preset color needs data.channels 3, "
                          f"got {cfg.data.channels} (use preset digits)")


def views_figure(batch: Batch) -> ImageRows:
    return ImageRows({"image": batch["image"][:8], "view 1": batch["view1"][:8], "view 2": batch["view2"][:8]},
                     "contrastive views")
