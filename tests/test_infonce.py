"""InfoNCE: (a) NT-Xent equals the formula written out with loops, (b) 2 gloo processes with
gathered negatives equal 1 process with the whole batch in loss and gradient (different data on
each rank), (c) the gather's backward brings other ranks' loss gradients to this rank's
embeddings, the two-view transform, and (f) the loss falls end to end."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from vitssl.data.views import TwoViews, ViewOptions
from vitssl.objectives.gather import gather_with_grad
from vitssl.objectives.infonce import ProjectionHead, nt_xent

from launching import client, free_port, last_lines, launch, metric

B, D, E, T = 4, 16, 8, 0.2  # per-rank batch, embedding dim, projection dim, temperature
WORLD = 2


def nt_xent_loops(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """SimCLR's loss, term by term: views k = 0..2N-1, positive of k is k +- N, and the
    denominator runs over every view except k itself."""
    views = [z1[i] for i in range(len(z1))] + [z2[i] for i in range(len(z2))]
    n = len(z1)
    total = 0.0
    for k in range(2 * n):
        pos = k + n if k < n else k - n
        sim = lambda a, b: float(views[a] @ views[b]) / (float(views[a].norm()) * float(views[b].norm()))  # noqa: E731
        numerator = math.exp(sim(k, pos) / temperature)
        denominator = sum(math.exp(sim(k, j) / temperature) for j in range(2 * n) if j != k)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def test_nt_xent_equals_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, E, generator=g, dtype=torch.float64), torch.randn(6, E, generator=g, dtype=torch.float64)
    loss, acc = nt_xent(F.normalize(z1, dim=1), F.normalize(z2, dim=1), 0.3, gather=False)
    assert abs(loss.item() - nt_xent_loops(z1, z2, 0.3)) < 1e-9
    # Without a process group, gathering is the identity.
    assert nt_xent(F.normalize(z1, dim=1), F.normalize(z2, dim=1), 0.3, gather=True)[0].item() == loss.item()
    # Two identical views and orthogonal images: every positive ranks first, loss -> small.
    eye = torch.eye(E, dtype=torch.float64)[:4]
    loss_eye, acc_eye = nt_xent(eye, eye, 0.05, gather=False)
    assert acc_eye.item() == 1.0 and loss_eye.item() < 1e-6


def fixed_problem():
    """A fixed global batch of 2B pooled embeddings for both views, and one head initialisation."""
    g = torch.Generator().manual_seed(1)
    h1, h2 = torch.randn(WORLD * B, D, generator=g), torch.randn(WORLD * B, D, generator=g)
    torch.manual_seed(2)
    return h1, h2, ProjectionHead(D, 32, E)


def project(head, h1, h2):
    return F.normalize(head(h1), dim=1), F.normalize(head(h2), dim=1)


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    h1, h2, head = fixed_problem()
    rows = slice(rank * B, (rank + 1) * B)  # different data on each rank
    results = {}
    for gather in (True, False):
        model = DDP(ProjectionHead(D, 32, E))
        model.module.load_state_dict(head.state_dict())
        x1, x2 = h1[rows].clone().requires_grad_(), h2[rows].clone().requires_grad_()
        loss, _ = nt_xent(*project(model, x1, x2), T, gather=gather)
        loss.backward()  # DDP averages the head's gradients over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[gather] = {"loss": mean_loss / WORLD,
                           "head_grads": {n: p.grad.clone() for n, p in model.module.named_parameters()},
                           "x1_grad": x1.grad.clone(), "x2_grad": x2.grad.clone()}
    # (c) only rank 0's loss is back-propagated: rank 1's embeddings still get a gradient.
    x1, x2 = h1[rows].clone().requires_grad_(), h2[rows].clone().requires_grad_()
    loss, _ = nt_xent(*project(head, x1, x2), T, gather=True)
    (loss * (1.0 if rank == 0 else 0.0)).backward()
    results["rank0_only"] = {"x1_grad": x1.grad.clone(), "x2_grad": x2.grad.clone()}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def one_process(rank0_only: bool = False):
    h1, h2, head = fixed_problem()
    x1, x2 = h1.clone().requires_grad_(), h2.clone().requires_grad_()
    z1, z2 = project(head, x1, x2)
    if rank0_only:  # rank 0's loss: its own anchors (rows 0..B-1 of each view) against all 4B views
        logits_loss = []
        for k in [*range(B), *range(WORLD * B, WORLD * B + B)]:
            views = torch.cat([z1, z2])
            pos = k + WORLD * B if k < WORLD * B else k - WORLD * B
            logits = views[k] @ views.T / T
            logits = torch.cat([logits[:k], logits[k + 1:]])
            logits_loss.append(-logits[pos - (pos > k)] + torch.logsumexp(logits, 0))
        loss = torch.stack(logits_loss).mean()
    else:
        loss, _ = nt_xent(z1, z2, T, gather=False)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in head.named_parameters()}, x1.grad, x2.grad


@pytest.mark.slow
def test_two_processes_with_gathered_negatives_equal_one_process(two_ranks):
    loss, grads, x1_grad, x2_grad = one_process()
    for rank, res in enumerate(two_ranks):
        got = res[True]
        torch.testing.assert_close(got["loss"], loss, atol=1e-6, rtol=1e-5)
        for name, g in grads.items():
            torch.testing.assert_close(got["head_grads"][name], g, atol=1e-6, rtol=1e-5)
        # The embeddings' gradient is the sum over ranks' losses, so W x the mean-loss gradient;
        # DDP's averaging over ranks brings the encoder's gradient back to the 1-process value.
        rows = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(got["x1_grad"], WORLD * x1_grad[rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got["x2_grad"], WORLD * x2_grad[rows], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_local_negatives_only_differ_from_the_full_batch(two_ranks):
    loss, grads, _, _ = one_process()
    local = two_ranks[0][False]
    assert abs(local["loss"].item() - loss.item()) > 1e-3
    assert max((local["head_grads"][n] - g).abs().max().item() for n, g in grads.items()) > 1e-4


@pytest.mark.slow
def test_gather_backward_brings_other_ranks_gradients(two_ranks):
    """Rank 1 did not back-propagate its own loss, yet its embeddings get rank 0's gradient."""
    _, _, x1_grad, x2_grad = one_process(rank0_only=True)
    got = two_ranks[1]["rank0_only"]
    assert got["x1_grad"].abs().sum() > 0 and got["x2_grad"].abs().sum() > 0
    torch.testing.assert_close(got["x1_grad"], x1_grad[B:2 * B], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["x2_grad"], x2_grad[B:2 * B], atol=1e-6, rtol=1e-5)


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


@pytest.mark.parametrize("preset,size,channels", [("digits", 28, 1), ("color", 64, 3)])
def test_two_views_shapes_range_and_seeded_randomness(preset, size, channels):
    views = TwoViews(ViewOptions(preset=preset, noise_std=0.05), size)
    image = torch.rand(channels, size, size)

    def draw(seed):
        torch.manual_seed(seed)
        return views({"image": image.clone()})

    a, b = draw(0), draw(0)
    for key in ("view1", "view2"):
        assert a[key].shape == (channels, size, size)
        assert 0 <= a[key].min() and a[key].max() <= 1
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["view1"], a["view2"])
    assert not torch.equal(a["view1"], draw(1)["view1"])


def test_color_views_survive_grayscale_and_grayscale_inputs():
    # RandomGrayscale returns a channel-expanded view; the views must not be written in place.
    views = TwoViews(ViewOptions(preset="color", grayscale_p=1.0, blur_p=0.0, noise_std=0.0), 64)
    for channels in (3, 1):
        out = views({"image": torch.rand(channels, 64, 64)})
        assert out["view1"].shape == (3, 64, 64)
        assert torch.equal(out["view1"][0], out["view1"][1])


def test_view_options_reject_bad_ranges_and_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ViewOptions(crop_scale=(0.8, 0.5))
    with pytest.raises(ValidationError):
        ViewOptions(flip=True)


@pytest.mark.slow
def test_infonce_loss_falls_with_two_processes(mnist012, tmp_path):
    out = launch("pretrain.py", "configs/mnist012/infonce.yaml",
                 [f"data.shards={mnist012}", f"run.output_dir={tmp_path}/run",
                  f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "run.epochs=4", "optim.warmup_epochs=1"],
                 tmp_path, nproc=2)
    mlc = client(tmp_path)
    run_id = last_lines(out)["mlflow run id"]
    assert mlc.get_run(run_id).info.status == "FINISHED"
    losses = metric(mlc, run_id, "epoch_loss")
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert metric(mlc, run_id, "epoch_contrastive_acc")


@pytest.mark.slow
def test_two_processes_match_one_process_end_to_end(mnist012, tmp_path):
    """The whole path (seeded views, DDP, gathered negatives): 2 x 8 = 1 x 16, step by step."""
    base = [f"data.shards={mnist012}", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "data.shuffle=false",
            "run.max_steps=4", "run.log_every=1", "optim.lr=1e-3"]
    one = launch("pretrain.py", "configs/mnist012/infonce.yaml",
                 base + ["data.batch_size=16", f"run.output_dir={tmp_path}/one"], tmp_path, nproc=1)
    two = launch("pretrain.py", "configs/mnist012/infonce.yaml",
                 base + ["data.batch_size=8", f"run.output_dir={tmp_path}/two"], tmp_path, nproc=2)
    mlc = client(tmp_path)
    loss_one = metric(mlc, last_lines(one)["mlflow run id"], "loss")
    loss_two = metric(mlc, last_lines(two)["mlflow run id"], "loss")
    assert len(loss_one) == len(loss_two) == 4 and loss_one[0] != loss_one[3]
    for a, b in zip(loss_one, loss_two, strict=True):
        assert abs(a - b) < 1e-5, (loss_one, loss_two)
