"""The baseline systems (CNN objectives, Swin distillation) piece by piece: CNN and Swin encoders through the registry, RandAugment,
Mixup, the distillation loss against its formula, the frozen teacher, rotation labels, config checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from vitssl.config import ConfigError, PretrainConfig, load_config
from vitssl.data.augment import RandAugmentDigits, affine_copies, chain
from vitssl.engine.optimizer import param_groups
from vitssl.models import (
    CNN,
    CNNOptions,
    Swin,
    SwinOptions,
    ViT,
    ViTOptions,
    encoder_export,
    encoder_from_export,
)
from vitssl.models.cnn import CNNDecoder
from vitssl.objectives import build_objective, parse_options
from vitssl.objectives.classify import ClassifyOptions
from vitssl.objectives.distill import Distill, DistillOptions, FrozenClassifier, kd_loss
from vitssl.objectives.mixup import mixup
from vitssl.objectives.rotation import RandomRotation90


@pytest.mark.parametrize("encoder, tokens", [
    (CNN(), 49),
    (CNN(CNNOptions(cnn_channels=[16, 32], cnn_groups=4)), 196),
    (Swin(), 49),
    (Swin(SwinOptions(patch_size=4, embed_dim=32, num_heads=2, depth=3)), 16),
    (ViT(ViTOptions(depth=2)), 17),
])
def test_encoders_forward_backward_and_rebuild_from_their_export(encoder, tokens):
    x = torch.rand(2, 1, 28, 28)
    assert encoder.forward_features(x).shape == (2, tokens, encoder.embed_dim)
    encoder(x).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    export = encoder_export(encoder)
    rebuilt = encoder_from_export(export)
    rebuilt.load_state_dict(export["state_dict"], strict=True)
    encoder.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), encoder(x))


@pytest.mark.parametrize("arch, args, options", [
    (None, {"img_size": 28, "patch_size": 7, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2},
     ViTOptions(embed_dim=32, depth=1, num_heads=2)),
    ("swin", {"img_size": 28, "in_chans": 1, "patch_size": 2, "embed_dim": 24, "depth": 2, "num_heads": 3,
              "window_size": 7}, SwinOptions(embed_dim=24, swin_window=7)),
    ("cnn", {"img_size": 28, "in_chans": 1, "channels": [16, 32], "groups": 4},
     CNNOptions(cnn_channels=[16, 32], cnn_groups=4)),
])
def test_exports_of_constructor_arguments_are_read_as_options(arch, args, options):
    """Exports that hold the constructor's arguments (and, for ViTs, perhaps no arch) still rebuild."""
    export = {"args": args, **({"arch": arch} if arch else {})}
    encoder = encoder_from_export(export)
    assert (encoder.options, encoder.image_size, encoder.channels) == (options, 28, 1)
    export = encoder_export(encoder)
    assert (export["model"], export["image_size"], export["channels"]) == (options.model_dump(), 28, 1)


def test_swin_alternates_regular_and_shifted_windows():
    model = Swin(SwinOptions(depth=2, swin_window=7))
    assert [b.attn.shift_size for b in model.blocks] == [[0, 0], [3, 3]]


def test_cnn_decoder_mirrors_the_encoder():
    encoder = CNN()
    assert CNNDecoder(encoder)(encoder(torch.rand(3, 1, 28, 28))).shape == (3, 1, 28, 28)


def test_randaugment_keeps_uint8_28x28_and_changes_images():
    torch.manual_seed(0)
    aug = RandAugmentDigits(num_ops=2, magnitude=9)
    image = (torch.rand(1, 28, 28) * 255).to(torch.uint8)
    outs = [aug.augment_uint8(image) for _ in range(20)]
    assert all(o.dtype == torch.uint8 and o.shape == (1, 28, 28) for o in outs)
    assert any(not torch.equal(o, image) for o in outs)
    sample = aug({"image": image.float() / 255})
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, 28, 28)
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert chain(None, aug, None) is aug and chain(None) is None


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 20), (3, 20, 32)])
def test_affine_copies_equal_torchvision_affine(shape):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    angles, shifts, scales = [-9.5, 0.0, 4.0, 30.0], [(2, -3), (0, 0), (-1.5, 0.5), (4, 1)], [0.9, 1.0, 1.1, 1.3]
    copies = affine_copies(image, angles, shifts, scales)
    for n in range(len(angles)):
        expected = TF.affine(image, angle=angles[n], translate=list(shifts[n]), scale=scales[n], shear=[0.0, 0.0],
                             interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(copies[n], expected, atol=1e-5, rtol=0)


def test_mixup_mixes_labels_with_the_images_coefficient():
    torch.manual_seed(0)
    images = torch.rand(8, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixed, targets, lam = mixup(images, labels, 3, alpha=0.4)
    assert 0 < lam < 1 and torch.allclose(targets.sum(1), torch.ones(8))
    for i in range(8):
        # the partner j is the image whose share (1 - lam) completes image i
        j = min(range(8), key=lambda j: (mixed[i] - lam * images[i] - (1 - lam) * images[j]).abs().max())
        torch.testing.assert_close(mixed[i], lam * images[i] + (1 - lam) * images[j])
        expected = lam * nn.functional.one_hot(labels[i], 3) + (1 - lam) * nn.functional.one_hot(labels[j], 3)
        torch.testing.assert_close(targets[i], expected.float())


def test_kd_loss_equals_the_formula():
    student = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    teacher = torch.tensor([[1.0, 0.0, -2.0], [-1.0, 4.0, 0.5]])
    t = 4.0
    p_t = torch.exp(teacher / t) / torch.exp(teacher / t).sum(1, keepdim=True)
    p_s = torch.exp(student / t) / torch.exp(student / t).sum(1, keepdim=True)
    expected = t ** 2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(kd_loss(student, teacher, t), expected)
    assert kd_loss(teacher, teacher, t).abs() < 1e-6


def teacher_model(num_classes: int = 3) -> FrozenClassifier:
    torch.manual_seed(1)
    return FrozenClassifier(ViT(ViTOptions(depth=1, embed_dim=32, dropout=0.5)), nn.Linear(32, num_classes), "cls")


def test_teacher_is_a_frozen_registered_module_outside_the_optimizer():
    teacher = teacher_model()
    student = Distill(Swin(SwinOptions(embed_dim=24)), DistillOptions(num_classes=3), teacher)
    teacher_ids = {id(p) for p in teacher.parameters()}
    optimized = {id(p) for group in param_groups(student, 0.05) for p in group["params"]}
    assert teacher_ids and not teacher_ids & optimized
    assert any(k.startswith("teacher.") for k in student.state_dict())  # checkpoints and resumes with the run
    student.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = {"image": torch.rand(4, 1, 28, 28)}
    loss, metrics = student(batch)  # no "label" in the batch: the loss cannot read one
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if id(p) not in teacher_ids)
    torch.testing.assert_close(teacher(batch["image"]), teacher(batch["image"]))  # eval: dropout off
    student.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64  # moves follow the student


def test_teacher_and_student_must_agree_on_classes():
    with pytest.raises(ValueError, match="teacher predicts 3 classes, the student 10"):
        Distill(Swin(), DistillOptions(num_classes=10), teacher_model(3))


def test_rotation_label_is_the_applied_rotation():
    torch.manual_seed(0)
    image = torch.rand(1, 28, 28)
    seen = set()
    for _ in range(40):
        sample = RandomRotation90()({"image": image.clone()})
        k = int(sample["rotation"])
        seen.add(k)
        torch.testing.assert_close(torch.rot90(sample["rotated"], -k, dims=(-2, -1)), image)
        assert k == 0 or not torch.equal(sample["rotated"], image)
        torch.testing.assert_close(sample["image"], image)
    assert seen == {0, 1, 2, 3}


def config(*overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, list(overrides))


@pytest.mark.parametrize("objective, arch", [("cnn_autoencoder", "cnn"), ("rotation", "cnn"), ("simclr", "cnn"),
                                             ("rotation", "swin"), ("simclr", "vit")])
def test_baseline_objectives_build_and_step(objective, arch):
    extra = ["model.patch_size=2", "model.embed_dim=24", "model.num_heads=3"] if arch == "swin" else []
    objective_ = build_objective(config(f"objective.name={objective}", f"model.arch={arch}", *extra))
    transform = objective_.sample_transform() or (lambda s: s)
    samples = [transform({"image": torch.rand(1, 28, 28), "label": torch.tensor(0)}) for _ in range(4)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    loss, metrics = objective_(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in objective_.parameters())


@pytest.mark.parametrize("overrides, message", [
    (["objective.name=mae", "model.arch=cnn"],
     r"objective mae needs an encoder with masked_tokens; model.arch cnn has none \(use vit\)"),
    (["objective.name=cnn_autoencoder"],
     r"objective cnn_autoencoder needs an encoder with feature_map; model.arch vit has none \(use cnn\)"),
])
def test_objective_arch_mismatch_is_a_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_options(config(*overrides))


@pytest.mark.parametrize("overrides, message", [
    (["model.cnn_channels=[32,64]"], "model.cnn_channels applies to model.arch cnn, not vit"),
    (["model.arch=cnn", "model.swin_window=4"], "model.swin_window applies to model.arch swin, not cnn"),
    (["model.arch=cnn", "model.cnn_channels=[30,64]"], "divisible by model.cnn_groups"),
    (["model.arch=swin", "model.frames=3", "model.tubelet=3"], "model.frames applies to model.arch vit, not swin"),
    (["model.arch=resnet"], "model.arch"),
])
def test_model_arch_options_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(*overrides)


def test_classify_options_unchanged_by_distill_options():
    assert DistillOptions(num_classes=3).temperature == 4.0
    assert "temperature" not in ClassifyOptions.model_fields
