"""Cosine k-nearest-neighbour classification of frozen features."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int,
                num_classes: int, temperature: float | None = 0.07,
                chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of `test` (M, D) from its k most cosine-similar rows of `train` (N, D).

    temperature: each neighbour votes exp(cos / T) for its class (DINO's weighted kNN);
    None: one vote each (majority; ties go to the lower class index).
    Returns (predictions (M,), class scores (M, num_classes) summing to 1 per row).
    """
    k = min(k, train.shape[0])
    train_n = F.normalize(train.float(), dim=1)
    out = []
    for start in range(0, test.shape[0], chunk):  # a (chunk, N) similarity block at a time: bounded memory
        sim = F.normalize(test[start:start + chunk].float(), dim=1) @ train_n.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.ones_like(top_sim) if temperature is None else (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, dtype=votes.dtype)
        scores.scatter_add_(1, train_labels[top_idx], votes)
        out.append(scores / scores.sum(1, keepdim=True))
    scores = torch.cat(out)
    return scores.argmax(1), scores
