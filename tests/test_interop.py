"""The encoder travels: exported folders load in timm alone with equal outputs; timm files, timm model
names in the local cache and mae checkpoints start fine-tunes and pretraining; position embeddings fit
any image size; bad files are one line. Real timm, real safetensors, no network."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from vitssl.config import PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.model_init import load_init, resolve_init
from vitssl.engine.pretrained import PretrainedError, build_encoder, resolve_pretrained
from vitssl.export.__main__ import main as export_main
from vitssl.export.pos_embed import LEARNED, MAE_SINCOS, VITSSL_SINCOS, table_kind
from vitssl.export.resize import fit_to_data
from vitssl.export.timm_layout import NoTimmEquivalent
from vitssl.export.write import verify_with_timm, write_folder
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
from vitssl.models.layers import sincos_pos_embed
from vitssl.objectives import build_objective

torch.manual_seed(0)


def mae_reference_sincos(dim: int, grid: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed(dim, grid, cls_token=True), restated."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # w goes first
    g = np.stack(g, axis=0).reshape(2, 1, grid, grid)
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def randomised(encoder: torch.nn.Module) -> torch.nn.Module:
    """Every weight (LayerNorms and tokens included) random, so a swapped key cannot go unnoticed."""
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.2)
    return encoder.eval()


def classifier_export(encoder, num_classes: int = 3, pool: str = "cls") -> dict:
    head = torch.nn.Linear(encoder.embed_dim, num_classes)
    return encoder_export(encoder) | {"head": {k: v.detach() for k, v in head.state_dict().items()},
                                      "objective": "classify", "config": {"finetune": {"pool": pool}}}


EXPORTS = {
    "vit-sincos-cls": lambda: encoder_export(randomised(ViT(ViTOptions(depth=2)))),
    "vit-learned-mean": lambda: encoder_export(randomised(ViT(ViTOptions(depth=2, cls_token=False, pos_embed="learned")))),
    "vit-classifier": lambda: classifier_export(randomised(ViT(ViTOptions(depth=2)))),
    "vit-classifier-mean-pool": lambda: classifier_export(randomised(ViT(ViTOptions(depth=2))), pool="mean"),
    "swin": lambda: encoder_export(randomised(Swin(SwinOptions()))),
    "swin-classifier": lambda: classifier_export(randomised(Swin(SwinOptions(patch_size=4)))),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_folder_loads_in_timm_alone_with_equal_outputs(name, tmp_path):
    export = EXPORTS[name]()
    written = write_folder(export, tmp_path / name, label_names=["zero", "one", "two"])
    assert set(written.files) == {"model.safetensors", "config.json"}
    assert verify_with_timm(export, written.folder) <= 1e-5
    config = json.loads((written.folder / "config.json").read_text())
    assert set(config) >= {"architecture", "num_classes", "model_args", "pretrained_cfg"}
    assert config["pretrained_cfg"]["input_size"] == [export["channels"], 28, 28]
    classes = 3 if "head" in export else 0
    assert config["num_classes"] == classes and config.get("label_names", ["zero", "one", "two"]) == ["zero", "one", "two"]
    # the other documented way: the timm name, its arguments, its pretrained_cfg (num_classes: the head is
    # kept) and the weights file
    overlay = config["pretrained_cfg"] | {"file": str(written.folder / "model.safetensors")}
    model = timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                              pretrained_cfg_overlay=overlay).eval()
    x = torch.rand(3, 1, 28, 28)
    from vitssl.export.write import vitssl_forward

    with torch.no_grad():
        assert (model(x) - vitssl_forward(export)(x)).abs().max() <= 1e-5
        assert model(x).shape == (3, classes or written.timm.model_args.get("embed_dim") * (2 if "swin" in name else 1))


def test_config_json_is_what_timms_own_hub_export_writes(tmp_path):
    export = classifier_export(randomised(ViT(ViTOptions(depth=1))))
    write_folder(export, tmp_path / "ours", label_names=["a", "b", "c"])
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    model = timm.create_model(ours["architecture"], pretrained=False, pretrained_cfg=ours["pretrained_cfg"],
                              **ours["model_args"])
    timm.models.save_for_hf(model, tmp_path / "timm", model_config={"label_names": ["a", "b", "c"]},
                            safe_serialization=True)
    assert json.loads((tmp_path / "timm" / "config.json").read_text()) == ours


def test_the_exported_position_table_is_the_actual_one_and_differs_from_mae(tmp_path):
    export = encoder_export(randomised(ViT(ViTOptions(depth=1))))
    from safetensors.torch import load_file

    write_folder(export, tmp_path / "t")
    table = load_file(str(tmp_path / "t" / "model.safetensors"))["pos_embed"][0]
    assert torch.equal(table, sincos_pos_embed(64, (1, 4, 4)))
    mae = torch.tensor(mae_reference_sincos(64, 4)[1:], dtype=torch.float32)
    assert (table - mae).abs().max() > 1.0  # same frequencies, axes in the other order
    assert table_kind(table, 4) == VITSSL_SINCOS and table_kind(mae, 4) == MAE_SINCOS
    assert table_kind(torch.randn(16, 64), 4) == LEARNED


def test_encoders_without_a_timm_equivalent_say_so_in_one_line(tmp_path):
    for encoder, words in ((CNN(CNNOptions()), "cnn encoder has no timm equivalent"),
                           (ViT(ViTOptions(frames=4, tubelet=2, depth=1)), "clip ViT"),
                           (Swin(SwinOptions(swin_window=5)), "does not divide its token grid")):
        with pytest.raises(NoTimmEquivalent, match=words) as err:
            write_folder(encoder_export(encoder), tmp_path / "x")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "x").exists()  # nothing half-written


def ft_config(spec: str, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [f"finetune.pretrained={spec}", *overrides])


def test_a_timm_vit_file_and_an_exported_folder_come_back_as_the_same_function(tmp_path):
    timm_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1,
                                 embed_dim=64, depth=2, num_heads=4, num_classes=5).eval()
    randomised(timm_vit)
    save_file(timm_vit.state_dict(), str(tmp_path / "timm.safetensors"))
    torch.save(timm_vit.state_dict(), tmp_path / "timm.pth")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        want = timm_vit.forward_head(timm_vit.forward_features(x), pre_logits=True)
    for file in ("timm.safetensors", "timm.pth"):
        cfg = ft_config(str(tmp_path / file), "model.num_heads=4")  # the bare file does not say
        lines: list[str] = []
        encoder = build_encoder(cfg, resolve_pretrained(cfg.finetune.pretrained, None, cfg.model), lines.append).eval()
        with torch.no_grad():
            assert (encoder(x) - want).abs().max() <= 1e-5
        assert any("class token's position row is folded" in ln for ln in lines)
        assert any("num_heads 4 from model.num_heads" in ln for ln in lines)
        assert any("head ignored" in ln for ln in lines)

    # our export, written as a timm folder and read back: our own fixed sin-cos again, same outputs
    ours = randomised(ViT(ViTOptions(depth=2)))
    write_folder(encoder_export(ours), tmp_path / "folder")
    cfg = ft_config(str(tmp_path / "folder"), "model.num_heads=8")  # the folder's config.json says 4
    with pytest.raises(PretrainedError, match=r"model.num_heads 8 \(weights: 4\)") as err:
        resolve_pretrained(cfg.finetune.pretrained, None, cfg.model)
    assert "\n" not in str(err.value)
    cfg = ft_config(str(tmp_path / "folder"))
    back = build_encoder(cfg, resolve_pretrained(cfg.finetune.pretrained, None, cfg.model)).eval()
    assert back.options.pos_embed == "sincos"
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))


def test_a_timm_model_name_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(PretrainedError, match="not in the local Hugging Face cache .* does not download") as err:
        resolve_pretrained(name, None)
    assert "\n" not in str(err.value)
    # what a download would have left in the cache: a snapshot of the hub repo, with refs/main naming it
    repo = tmp_path / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    model = randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    save_file(model.state_dict(), str(snapshot / "model.safetensors"))
    found = resolve_pretrained(name, None)
    o = found.export["model"]
    assert (o["embed_dim"], o["depth"], o["num_heads"], o["patch_size"], found.export["image_size"]) == (192, 12, 3, 16, 224)
    encoder = encoder_from_export(found.export).eval()
    encoder.load_state_dict(found.export["state_dict"])
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert (encoder(x) - model.forward_head(model.forward_features(x), pre_logits=True)).abs().max() <= 1e-5


def learned_vit_export(img_size: int, patch: int) -> dict:
    vit = randomised(ViT(ViTOptions(patch_size=patch, depth=1, pos_embed="learned"), img_size))
    return encoder_export(vit)


@pytest.mark.parametrize("old,new,patch", [(28, 56, 7), (64, 224, 16)])
def test_position_embeddings_fit_another_image_size(old, new, patch, tmp_path):
    learned = learned_vit_export(old, patch)
    fitted, notes = fit_to_data(learned, new, 1, "src")
    assert notes == [f"position embedding: learned, resampled bicubically for the {old // patch}x{old // patch} -> "
                     f"{new // patch}x{new // patch} patch grid ({old} -> {new} px)"]
    encoder = encoder_from_export(fitted)
    encoder.load_state_dict(fitted["state_dict"])
    assert encoder(torch.rand(2, 1, new, new)).shape == (2, 64)
    # timm, asked for the new size, resamples the exported table the same way
    write_folder(learned, tmp_path / "old")
    timm_new = timm.create_model(f"local-dir:{tmp_path / 'old'}", pretrained=True, img_size=new).eval()
    x = torch.rand(2, 1, new, new)
    with torch.no_grad():
        assert (timm_new(x) - encoder.eval()(x)).abs().max() <= 1e-5

    sincos = encoder_export(ViT(ViTOptions(patch_size=patch, depth=1), old))
    fitted, notes = fit_to_data(sincos, new, 1, "src")
    assert notes[0].startswith("position embedding: fixed sin-cos recomputed")
    encoder = encoder_from_export(fitted)
    encoder.load_state_dict(fitted["state_dict"])
    assert torch.equal(encoder.pos_embed[0], sincos_pos_embed(64, (1, new // patch, new // patch)))

    same, notes = fit_to_data(learned, old, 1, "src")  # the identity size changes nothing
    assert notes == [] and same["state_dict"] is not learned["state_dict"]
    assert all(torch.equal(same["state_dict"][k], v) for k, v in learned["state_dict"].items())


def test_an_export_in_the_argument_layout_is_read_and_fitted_into_the_options_layout(tmp_path):
    vit = randomised(ViT(ViTOptions(depth=1, pos_embed="learned")))
    o = vit.options
    args = dict(img_size=28, patch_size=o.patch_size, in_chans=1, embed_dim=o.embed_dim, depth=1,
                num_heads=o.num_heads, mlp_ratio=o.mlp_ratio, cls_token=True, pos_embed="learned")
    legacy = {"args": args, "state_dict": encoder_export(vit)["state_dict"], "objective": "mae"}
    write_folder(legacy, tmp_path / "t")
    assert verify_with_timm(legacy, tmp_path / "t") <= 1e-5
    fitted, notes = fit_to_data(legacy, 56, 1, "src")
    assert "args" not in fitted and fitted["model"]["pos_embed"] == "learned" and fitted["image_size"] == 56
    assert notes[0].startswith("position embedding: learned, resampled bicubically for the 4x4 -> 8x8")


def test_fine_tune_at_224_from_a_64_px_encoder(tmp_path):
    vit = randomised(ViT(ViTOptions(patch_size=16, depth=1), 64, 3))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(encoder_export(vit) | {"objective": "mae"}, folder / "encoder.pt")
    cfg = ft_config(str(folder), "data.image_size=224", "data.channels=1")
    lines: list[str] = []
    encoder = build_encoder(cfg, resolve_pretrained(str(folder), None), lines.append)
    assert (encoder.image_size, encoder.channels) == (224, 1)
    assert encoder(torch.rand(1, 1, 224, 224)).shape == (1, 64)
    assert any("fixed sin-cos recomputed for the 4x4 -> 14x14 patch grid" in ln for ln in lines)
    assert any("3 input channels summed for 1-channel data" in ln for ln in lines)
    # a gray image through the summed kernels = the same image repeated on three channels
    gray = torch.rand(1, 1, 64, 64)
    small = build_encoder(ft_config(str(folder), "data.image_size=64"), resolve_pretrained(str(folder), None),
                          lambda _: None).eval()
    with torch.no_grad():
        assert (small(gray) - vit(gray.repeat(1, 3, 1, 1))).abs().max() <= 1e-5


class NotATensor:
    pass


def test_bad_weights_are_one_line(tmp_path):
    good = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1,
                             embed_dim=64, depth=2, num_heads=4, num_classes=0).state_dict()
    cases = {
        "shapes.safetensors": ({**good, "blocks.1.attn.qkv.weight": torch.zeros(96, 64)},
                               r"shape mismatch \(1\): blocks.1.attn.qkv.weight"),
        "missing.safetensors": ({k: v for k, v in good.items() if not k.startswith("norm.")},
                                r"missing \(2\): norm.bias, norm.weight"),
        "extra.safetensors": ({**good, "fc_norm.weight": torch.ones(64)}, r"unexpected \(1\): fc_norm.weight"),
        "notvit.safetensors": ({"conv1.weight": torch.zeros(8, 3, 3, 3)}, "no ViT weights in timm's layout"),
    }
    for name, (state, words) in cases.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
        cfg = ft_config(str(tmp_path / name))
        with pytest.raises(PretrainedError, match=words) as err:
            build_encoder(cfg, resolve_pretrained(str(tmp_path / name), None), lambda _: None)
        assert "\n" not in str(err.value), name
    (tmp_path / "text.safetensors").write_text("not a checkpoint")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save({"model": NotATensor()}, tmp_path / "pickle.pth")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    for name, words in (("text.safetensors", "not a readable safetensors file"),
                        ("text.pth", "not a weights-only checkpoint"),
                        ("pickle.pth", r"torch.load\(weights_only=True\) refused it"),
                        ("nostate.pth", "holds no state dict")):
        with pytest.raises(PretrainedError, match=words) as err:
            resolve_pretrained(str(tmp_path / name), None)
        assert "\n" not in str(err.value), name


def mae_checkpoint(path, embed_dim: int = 64, depth: int = 2, decoder_dim: int = 32, decoder_depth: int = 1,
                   grid: int = 4, patch: int = 7, chans: int = 1) -> dict:
    """A checkpoint in facebookresearch/mae's released layout from a random model: {'model': state_dict},
    fixed sin-cos tables (mae's formula, class row zero), decoder_* keys."""
    enc = randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=grid * patch,
                                       patch_size=patch, in_chans=chans, embed_dim=embed_dim, depth=depth,
                                       num_heads=4, num_classes=0))
    dec = randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=grid * patch,
                                       patch_size=patch, embed_dim=decoder_dim, depth=decoder_depth, num_heads=4,
                                       num_classes=0))
    state = {k: v for k, v in enc.state_dict().items()}
    state["pos_embed"] = torch.tensor(mae_reference_sincos(embed_dim, grid), dtype=torch.float32)[None]
    state["mask_token"] = torch.randn(1, 1, decoder_dim)
    state["decoder_embed.weight"] = torch.randn(decoder_dim, embed_dim)
    state["decoder_embed.bias"] = torch.randn(decoder_dim)
    state["decoder_pos_embed"] = torch.tensor(mae_reference_sincos(decoder_dim, grid), dtype=torch.float32)[None]
    for k, v in dec.state_dict().items():
        if k.startswith("blocks."):
            state[f"decoder_{k}"] = v
    state["decoder_norm.weight"], state["decoder_norm.bias"] = torch.rand(decoder_dim), torch.randn(decoder_dim)
    state["decoder_pred.weight"] = torch.randn(patch * patch * chans, decoder_dim)
    state["decoder_pred.bias"] = torch.randn(patch * patch * chans)
    torch.save({"model": state}, path)
    return state


def test_an_mae_checkpoint_starts_mae_pretraining_with_its_decoder_and_tables(tmp_path, mnist012):
    state = mae_checkpoint(tmp_path / "mae.pth")
    cfg = load_config(PretrainConfig, None, [f"data.shards={mnist012}", f"model.init={tmp_path / 'mae.pth'}",
                                             "objective.name=mae", "objective.decoder_heads=4", "model.depth=2",
                                             "model.num_heads=4", "model.dropout=0.1"])
    lines: list[str] = []
    cfg, init = resolve_init(cfg, lines.append)
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.pos_embed) == (64, 2, "learned")
    assert cfg.model.dropout == 0.1  # the weights fix the sizes, not the run's regularisation
    assert (cfg.objective["decoder_dim"], cfg.objective["decoder_depth"]) == (32, 1)
    objective = build_objective(cfg)
    load_init(objective, init, lines.append)
    own = objective.state_dict()
    assert torch.equal(own["encoder.pos_embed"][0], state["pos_embed"][0, 1:])  # mae's table, as it was trained
    assert torch.equal(own["encoder.blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"])
    assert torch.equal(own["decoder.blocks.0.attn.qkv.weight"], state["decoder_blocks.0.attn.qkv.weight"])
    assert torch.equal(own["decoder.mask_token"], state["mask_token"])
    assert torch.equal(objective.decoder.pos_embed[0], state["decoder_pos_embed"][0, 1:])
    assert any("mae's fixed sin-cos table, loaded as a learned parameter" in ln for ln in lines)
    # the same file for fine-tuning: the decoder is not part of the encoder
    ft = ft_config(str(tmp_path / "mae.pth"), "model.depth=2", "model.num_heads=4")
    encoder = build_encoder(ft, resolve_pretrained(ft.finetune.pretrained, None, ft.model), lambda _: None)
    assert not any(k.startswith("decoder") for k in encoder.state_dict())
    # without a config to say, heads 64 wide are assumed (timm's and mae's ViTs), and the log says so
    alone = resolve_pretrained(str(tmp_path / "mae.pth"), None).export
    assert alone["model"]["num_heads"] == 1 and any("num_heads 1 assumed" in n for n in alone["notes"])
    # a config that contradicts the weights: one line listing the keys
    bad = load_config(PretrainConfig, None, [f"data.shards={mnist012}", f"model.init={tmp_path / 'mae.pth'}",
                                             "model.embed_dim=32", "objective.name=mae", "objective.decoder_dim=64"])
    with pytest.raises(PretrainedError, match=r"model.embed_dim 32 \(weights: 64\); objective.decoder_dim 64 "
                                              r"\(weights: 32\)") as err:
        resolve_init(bad, lines.append)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_timm_file_fine_tunes_and_mae_checkpoint_continues_pretraining_end_to_end(tmp_path, mnist012):
    from safetensors.torch import load_file

    from vitssl.engine.finetune import run_finetune
    from vitssl.engine.pretrain import run_pretrain

    common = [f"data.shards={mnist012}", "run.epochs=1", "run.max_steps=2", "data.batch_size=16",
              "run.figure_every=0", f"run.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    timm_vit = randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7,
                                            in_chans=1, embed_dim=64, depth=2, num_heads=4, num_classes=0))
    save_file(timm_vit.state_dict(), str(tmp_path / "timm.safetensors"))
    cfg = load_config(FinetuneConfig, None, [*common, f"finetune.pretrained={tmp_path / 'timm.safetensors'}",
                                             f"run.output_dir={tmp_path / 'ft'}", "finetune.tsne=false",
                                             "finetune.head_init=random", "model.depth=2", "model.num_heads=4"])
    result = run_finetune(cfg)
    assert result.metrics["test_n"] == 300 and 0 <= result.metrics["test_accuracy"] <= 1
    tuned = torch.load(result.checkpoint / "encoder.pt", weights_only=True)["state_dict"]
    assert tuned["blocks.0.attn.qkv.weight"].shape == (192, 64)
    assert not torch.equal(tuned["blocks.0.attn.qkv.weight"], timm_vit.state_dict()["blocks.0.attn.qkv.weight"])

    state = mae_checkpoint(tmp_path / "mae.pth")
    cfg = load_config(PretrainConfig, None, [*common, f"model.init={tmp_path / 'mae.pth'}", "objective.name=mae",
                                             "objective.decoder_heads=4", "objective.mask_ratio=0.5", "model.num_heads=4",
                                             f"run.output_dir={tmp_path / 'mae'}"])
    fit = run_pretrain(cfg)
    trained = load_file(str(fit.checkpoint / "model.safetensors"))
    assert trained["decoder.embed.weight"].shape == state["decoder_embed.weight"].shape
    moved = (trained["decoder.embed.weight"] - state["decoder_embed.weight"]).abs().max()
    assert 0 < moved < 0.05  # two small steps from mae's decoder, not from a fresh one
    export = torch.load(fit.checkpoint / "encoder.pt", weights_only=True)
    assert export["model"]["pos_embed"] == "learned" and export["config"]["model"]["init"] == str(tmp_path / "mae.pth")


@pytest.mark.slow
def test_a_pretraining_run_exports_for_timm_and_hugging_face_with_a_model_card(tmp_path, mnist012, capsys):
    """The run's logged model holds a timm-loadable folder; `python -m vitssl.export` writes one whose card
    shows the run and the evaluation that used its encoder; timm loads it in a process without vitssl."""
    import subprocess
    import sys

    import mlflow

    from vitssl.engine.finetune import run_finetune
    from vitssl.engine.pretrain import run_pretrain

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"data.shards={mnist012}", f"run.tracking_uri={uri}", "run.experiment=interop", "data.batch_size=16"]
    fit = run_pretrain(load_config(PretrainConfig, "configs/mnist012/mae.yaml",
                                   [*common, "run.epochs=1", "run.max_steps=2", "run.figure_every=0", "model.depth=2",
                                    f"run.output_dir={tmp_path / 'mae'}"]))
    run_id = fit.state.mlflow_run_id
    knn = run_finetune(load_config(FinetuneConfig, "configs/mnist012/finetune.yaml",
                                   [*common, f"finetune.pretrained={run_id}", "finetune.mode=knn", "finetune.tsne=false",
                                    f"run.output_dir={tmp_path / 'knn'}"]))
    name = mlflow.MlflowClient(uri).get_run(run_id).info.run_name  # the logged encoder's name
    logged = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{name}", dst_path=str(tmp_path / "dl"),
                                                 tracking_uri=uri)
    folder = Path(logged) / "extra_files"
    assert {"encoder.pt", "config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    export = torch.load(folder / "encoder.pt", weights_only=True)
    assert verify_with_timm(export, folder) <= 1e-5

    out = tmp_path / "hf"
    assert export_main([run_id, "--format", "hf", "--out", str(out), "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "reproduces the vitssl outputs" in printed and "model.safetensors:" in printed
    card = (out / "README.md").read_text()
    accuracy = knn.metrics["test_accuracy"]
    assert f"| knn (seed 0, run `{knn.run_id}`) | test | {accuracy:.4f} | [" in card
    assert run_id in card and "license" in card and "objective: mae (style=drop" in card
    assert export_main([run_id, "--format", "timm", "--out", str(out), "--tracking-uri", uri]) == 2
    assert "exists and is not empty" in capsys.readouterr().err

    code = ("import sys, timm, torch; m = timm.create_model('local-dir:%s', pretrained=True).eval(); "
            "print(tuple(m(torch.rand(2, 1, 28, 28)).shape), 'vitssl' in sys.modules)" % out)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.stdout.strip() == "(2, 64) False", done.stderr[-2000:]


def test_model_init_is_for_pretraining_only(tmp_path):
    from vitssl.config import ConfigError
    from vitssl.engine.finetune import run_finetune

    cfg = load_config(FinetuneConfig, None, ["model.init=weights.pth", f"run.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match="model.init='weights.pth' starts a pretraining run; a fine-tune starts "
                                          "from finetune.pretrained"):
        run_finetune(cfg)
    assert not (tmp_path / "out").exists()
