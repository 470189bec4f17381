"""Linear probe: a linear head (no BatchNorm) trained full-batch on frozen, standardised features."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LinearProbeResult:
    head: nn.Linear
    test_logits: torch.Tensor
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def train_linear_probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int, steps: int = 300, lr: float = 0.01,
                       weight_decay: float = 1e-3, seed: int = 0, eval_every: int = 10) -> LinearProbeResult:
    """Full-batch AdamW with cosine decay: the features of a few hundred images fit in one batch.

    Features should already be standardised (see embeddings.standardise). The test split is only
    scored along the way for the curves, never used to choose anything.
    """
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(train.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, list[tuple[int, float]]] = {"train_loss": [], "train_accuracy": [], "test_accuracy": []}
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits = head(train)
        loss = F.cross_entropy(logits, train_labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            with torch.no_grad():
                history["train_loss"].append((step + 1, loss.item()))
                history["train_accuracy"].append((step + 1, (logits.argmax(1) == train_labels).float().mean().item()))
                history["test_accuracy"].append((step + 1, (head(test).argmax(1) == test_labels).float().mean().item()))
    with torch.no_grad():
        test_logits = head(test)
    return LinearProbeResult(head, test_logits, history)
