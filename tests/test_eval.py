"""Evaluation building blocks against hand-computed answers: kNN, metrics, features, linear probe, plots."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from vitssl.config.load import ConfigError
from vitssl.data import load_split_tensors
from vitssl.engine.finetune import layer_decay_scales, set_drop_path
from vitssl.eval import classification_report, knn_predict, split_features, standardise, train_linear_probe
from vitssl.eval.plots import confusion_figure, embedding_figure, project
from vitssl.models import CNN, ViT, ViTOptions
from vitssl.tracking.plots import close

# Three classes on three directions; cosine similarity ignores the lengths.
TRAIN = torch.tensor([[1.0, 0, 0], [2.0, 0.1, 0], [0, 1.0, 0], [0, 3.0, 0.1], [0, 0, 1.0], [0.1, 0, 2.0]])
TRAIN_Y = torch.tensor([0, 0, 1, 1, 2, 2])


def test_knn_finds_the_known_neighbours():
    test = torch.tensor([[5.0, 0.2, 0], [0, 0.5, 0.01], [0.01, 0, 9.0]])
    pred, scores = knn_predict(TRAIN, TRAIN_Y, test, k=2, num_classes=3, temperature=None)
    assert pred.tolist() == [0, 1, 2]
    assert torch.allclose(scores, torch.eye(3))  # both neighbours of each point share its class
    pred1, _ = knn_predict(TRAIN, TRAIN_Y, test, k=1, num_classes=3)
    assert pred1.tolist() == [0, 1, 2]


def test_knn_temperature_weights_close_neighbours_above_the_majority():
    # The query is nearly on class 0's one point, but two class-1 points are moderately close.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[0.99, 0.14]])
    majority, _ = knn_predict(train, labels, query, k=3, num_classes=2, temperature=None)
    weighted, scores = knn_predict(train, labels, query, k=3, num_classes=2, temperature=0.05)
    assert majority.item() == 1 and weighted.item() == 0
    cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    w = (cos[0] / 0.05).exp()
    assert scores[0, 0].item() == pytest.approx((w[0] / w.sum()).item(), rel=1e-5)


def test_knn_k_larger_than_the_train_set_uses_all_of_it():
    pred, scores = knn_predict(TRAIN, TRAIN_Y, TRAIN[:1], k=50, num_classes=3, temperature=None)
    assert torch.allclose(scores, torch.full((1, 3), 1 / 3))


def test_classification_report_by_hand():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 2, 0]
    rep = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert rep.accuracy == pytest.approx(6 / 8)
    assert rep.per_class == {"a": 0.75, "b": 1.0, "c": 0.5}
    assert rep.confusion == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = rep.metrics("test_")
    assert m["test_accuracy_class_c"] == 0.5 and m["test_errors"] == 2
    assert "precision" in rep.text and "c" in rep.text


def test_standardise_uses_train_statistics_only():
    train = torch.tensor([[0.0, 10.0], [2.0, 30.0]])
    test = torch.tensor([[1.0, 20.0], [100.0, 20.0]])
    tr, te = standardise(train, test)
    assert torch.allclose(tr.mean(0), torch.zeros(2), atol=1e-6)
    assert te[0].abs().max() < 1e-5 and te[1, 0] > 50


def tiny_encoder(frames: int = 1) -> ViT:
    torch.manual_seed(0)
    return ViT(ViTOptions(patch_size=7, embed_dim=32, depth=2, num_heads=2, dropout=0.1, frames=frames, tubelet=1))


@pytest.mark.parametrize("frames", [1, 3])
def test_streamed_features_are_eval_mode_in_order_and_leave_the_encoder_unchanged(frames, mnist012):
    enc = tiny_encoder(frames)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    acc = Accelerator(cpu=True)
    a, ya = split_features(acc, enc, str(mnist012), "test", batch_size=64)
    b, yb = split_features(acc, enc, str(mnist012), "test", batch_size=37)
    assert a.shape == (300, 32) and torch.equal(ya, yb)
    assert torch.equal(ya, load_split_tensors(mnist012, "test")[1])  # manifest order
    torch.testing.assert_close(a, b)  # no dropout: eval mode, batch-size independent
    assert enc.training  # mode restored
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    y = torch.arange(3).repeat_interleave(40)
    x = centers[y] + torch.randn(120, 16, generator=g)
    tr, te = standardise(x[::2], x[1::2])
    res = train_linear_probe(tr, y[::2], te, y[1::2], 3, steps=100, lr=0.05)
    assert (res.test_logits.argmax(1) == y[1::2]).float().mean() > 0.95
    losses = [v for _, v in res.history["train_loss"]]
    assert losses[-1] < losses[0]


def test_layer_decay_scales_follow_depth():
    enc = tiny_encoder()
    s = layer_decay_scales(enc, 0.5)
    assert s["encoder.patch_embed.proj.weight"] == s["encoder.cls_token"] == 0.5 ** 3
    assert s["encoder.blocks.0.attn.qkv.weight"] == 0.5 ** 2 and s["encoder.blocks.1.mlp.fc2.bias"] == 0.5
    assert s["encoder.norm.weight"] == 1.0  # the top keeps the full LR
    assert set(s) == {f"encoder.{n}" for n, _ in enc.named_parameters()}


def test_layer_decay_and_drop_path_on_an_encoder_without_them_are_clear_errors():
    """The config catches these for scratch; a pretrained encoder's architecture is known only here."""
    with pytest.raises(ConfigError, match="finetune.layer_decay needs an encoder with layer ids; CNN has none"):
        layer_decay_scales(CNN(), 0.75)
    with pytest.raises(ConfigError, match="finetune.drop_path needs an encoder with residual blocks to drop; "
                                          "CNN has none"):
        set_drop_path(CNN(), 0.1)
    enc = tiny_encoder()
    set_drop_path(enc, 0.2)
    assert [b.drop_path.p for b in enc.blocks] == [0.0, 0.2]


def test_figures_render():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 8))
    labels = np.repeat(np.arange(3), 10)
    for method in ("pca", "tsne"):
        pts = project(feats, method)
        assert pts.shape == (30, 2) and np.isfinite(pts).all()
        close(embedding_figure(pts, labels, ["0", "1", "2"], method))
    close(confusion_figure([[1, 0], [2, 3]], ["a", "b"]))
    assert math.isfinite(float(pts.sum()))
