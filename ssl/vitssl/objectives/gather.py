"""All-gather that carries gradients, for negatives drawn from every process.

`torch.distributed.all_gather` (and `accelerator.gather`) return tensors without a graph, so the
embeddings of other ranks would act as constants and this rank's embeddings would miss the
gradient that other ranks' losses send them (lightly#1528, accelerate#1154).

Scaling. Each rank r computes L_r = mean of the loss over its OWN anchors against all gathered
candidates. DDP then averages parameter gradients: g = (1/W) sum_r dL_r/dtheta. Rank r's
embeddings z_r enter every L_q (as candidates), so dL_q/dz_r must reach rank r: the backward
below sums the gathered gradient over ranks (all-reduce) and keeps this rank's slice, giving
sum_q dL_q/dz_r. Then g = d/dtheta [(1/W) sum_q L_q] = the gradient of the mean over all W*B
anchors: W processes with batch B equal 1 process with batch W*B, in loss and gradient
(tests/test_infonce.py checks it with real gloo processes and different data on each rank).
Computing the loss over all gathered anchors on every rank instead would count it W times
(open_clip#616).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each of W ranks -> (W*B, ...) in rank order, differentiable. Per-rank batches
    must be equal (the loaders drop the uneven rest). Identity without a process group."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
