"""The pretrain -> fine-tune handoff on a real checkpoint: exact encoder weights, clear errors for a
wrong `finetune.pretrained`, frozen modes leave the encoder alone, MLflow links the runs, and each
mode end to end under `accelerate launch`."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from vitssl.config import PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine import finetune as engine
from vitssl.engine.finetune import run_finetune
from vitssl.engine.pretrain import run_pretrain
from vitssl.engine.pretrained import PretrainedError, build_encoder, load_encoder, resolve_pretrained
from vitssl.models import ViT, ViTOptions
from vitssl.objectives.classify import Classify, ClassifyOptions

from launching import client, launch, metric

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import finetune as finetune_cli  # noqa: E402

MAE = ROOT / "configs/mnist012/mae.yaml"
FINETUNE = ROOT / "configs/mnist012/finetune.yaml"


@pytest.fixture(scope="module")
def pretrained(mnist012, tmp_path_factory):
    """A real 3-step MAE pretraining run (2 blocks) in its own store and experiment."""
    root = tmp_path_factory.mktemp("pre")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(PretrainConfig, MAE, [f"data.shards={mnist012}", f"run.output_dir={root}/mae",
                                            f"run.tracking_uri={uri}", "run.experiment=handoff", "run.epochs=1",
                                            "run.max_steps=3", "data.batch_size=16", "model.depth=2"])
    result = run_pretrain(cfg)
    return {"root": root, "uri": uri, "run_id": result.state.mlflow_run_id, "checkpoint": result.checkpoint,
            "shards": mnist012}


def ft_config(p: dict, out: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, FINETUNE, [f"data.shards={p['shards']}", f"run.output_dir={out}",
                                                  f"run.tracking_uri={p['uri']}", "finetune.tsne=false",
                                                  *overrides])


def test_every_way_of_naming_the_pretrained_encoder_finds_its_checkpoint(pretrained):
    p, uri = pretrained, pretrained["uri"]
    saved = torch.load(p["checkpoint"] / "encoder.pt", weights_only=True)["state_dict"]
    for spec in (p["run_id"], f"runs:/{p['run_id']}", str(p["checkpoint"]), str(p["root"] / "mae")):
        found = resolve_pretrained(spec, uri)
        if found.handoff is None:  # a local path is read in place
            assert found.folder.resolve() == p["checkpoint"].resolve(), spec
        else:  # an MLflow reference is downloaded: the logged model holds the final checkpoint's export
            assert found.folder is None and found.source == f"runs:/{p['run_id']}/encoder", spec
            assert all(torch.equal(found.handoff.export["state_dict"][k], v) for k, v in saved.items()), spec
        assert found.run_id == p["run_id"] and found.experiment == "handoff" and found.objective == "mae"
    assert resolve_pretrained("none", uri).scratch


def test_handoff_loads_exactly_the_encoder_weights_and_a_new_head(pretrained):
    ckpt = pretrained["checkpoint"]
    saved = torch.load(ckpt / "encoder.pt", weights_only=True)
    trained = load_file(str(ckpt / "model.safetensors"))  # the whole MAE objective, as accelerate saved it
    cfg = ft_config(pretrained, Path("unused"), f"finetune.pretrained={ckpt}")
    encoder = build_encoder(cfg, resolve_pretrained(cfg.finetune.pretrained, pretrained["uri"]))
    assert encoder.options == ViTOptions(**saved["model"]) and len(encoder.blocks) == 2
    model = Classify(encoder, ClassifyOptions(num_classes=3))
    state = model.state_dict()
    encoder_keys = {k for k in state if k.startswith("encoder.")}
    assert encoder_keys == {f"encoder.{k}" for k in saved["state_dict"]}
    for k in encoder_keys:
        assert torch.equal(state[k], saved["state_dict"][k[len("encoder."):]]), k
        if k in trained:  # persistent weights: the very values the pretraining run trained
            assert torch.equal(state[k], trained[k]), k
    assert sum(k in trained for k in encoder_keys) >= len(encoder_keys) - 1  # all but the fixed sin-cos buffer
    assert set(state) - encoder_keys == {"head.weight", "head.bias"}  # the head is new
    assert not any(k.startswith("decoder") for k in state)


def test_wrong_pretrained_is_a_clear_error(pretrained, tmp_path):
    uri = pretrained["uri"]
    with pytest.raises(PretrainedError, match="runs:/0123456789abcdef0123456789abcdef/encoder does not exist"):
        resolve_pretrained("0123456789abcdef0123456789abcdef", uri)
    with pytest.raises(PretrainedError, match="runs:/0123456789abcdef0123456789abcdef/model does not exist"):
        resolve_pretrained("runs:/0123456789abcdef0123456789abcdef/model", uri)
    with pytest.raises(PretrainedError, match="no such file or folder, not a cached timm model name, and not an MLflow reference"):
        resolve_pretrained(str(tmp_path / "missing"), uri)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="neither a checkpoint folder"):
        resolve_pretrained(str(tmp_path / "empty"), uri)

    # A checkpoint whose weights are of another architecture than its arguments say.
    other = tmp_path / "other"
    shutil.copytree(pretrained["checkpoint"], other)
    export = torch.load(other / "encoder.pt", weights_only=True)
    export["state_dict"] = ViT(ViTOptions(embed_dim=32, depth=3, num_heads=4)).state_dict()
    torch.save(export, other / "encoder.pt")
    with pytest.raises(PretrainedError) as err:
        load_encoder(resolve_pretrained(str(other), uri).folder)
    text = str(err.value)
    assert "unexpected (12): blocks.2." in text and "shape mismatch (" in text and "(32,) vs encoder (64,)" in text

    # A checkpoint that is not an encoder export at all.
    (other / "encoder.pt").write_bytes(b"not a torch file")
    with pytest.raises(PretrainedError, match="not a vitssl encoder export"):
        load_encoder(other)
    with pytest.raises(PretrainedError, match="not a vitssl encoder export"):
        resolve_pretrained(str(other), uri)  # read once, when it is found

    # An encoder for other images than the data: a size its patches do not divide, more channels.
    for overrides, says in ((["data.image_size=32", "model.patch_size=8"],
                             "data.image_size 32 is not divisible by the patch size 7"),
                            (["data.channels=3"], "takes 1-channel images, data gives 3")):
        cfg = ft_config(pretrained, tmp_path / "x", f"finetune.pretrained={pretrained['checkpoint']}", *overrides)
        with pytest.raises(PretrainedError, match=says):
            build_encoder(cfg, resolve_pretrained(cfg.finetune.pretrained, uri))


def test_cli_exits_2_with_error_for_a_wrong_pretrained(pretrained, tmp_path, capsys):
    code = finetune_cli.main(["--config", str(FINETUNE), f"data.shards={pretrained['shards']}",
                              f"run.tracking_uri={pretrained['uri']}", "finetune.pretrained=" + "f" * 32])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: finetune.pretrained=")
    assert finetune_cli.main(["--config", str(FINETUNE), "finetune.mode=probe"]) == 2
    assert "finetune.mode" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["linear", "knn"])
def test_frozen_modes_leave_the_encoder_unchanged_and_log_beside_the_pretrain_run(pretrained, tmp_path, mode,
                                                                                   monkeypatch):
    built = []
    monkeypatch.setattr(engine, "build_encoder", lambda *a: built.append(build_encoder(*a)) or built[-1])
    cfg = ft_config(pretrained, tmp_path / mode, f"finetune.pretrained={pretrained['run_id']}",
                    f"finetune.mode={mode}", "finetune.linear_steps=50")
    result = run_finetune(cfg)
    saved = torch.load(pretrained["checkpoint"] / "encoder.pt", weights_only=True)["state_dict"]
    for k, v in built[0].state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert 0.5 < result.metrics["test_accuracy"] <= 1.0  # far above chance (1/3) even after 3 steps

    mlc = client(pretrained["root"])
    run = mlc.get_run(result.run_id)
    assert mlc.get_experiment(run.info.experiment_id).name == "handoff"  # not run.experiment's default
    tags = run.data.tags
    assert tags["vitssl.stage"] == "finetune" and tags["vitssl.mode"] == mode
    assert tags["vitssl.pretrain_run_id"] == tags["mlflow.parentRunId"] == pretrained["run_id"]
    for key in ("test_accuracy", "test_accuracy_class_0", "test_accuracy_class_2", "test_errors"):
        assert key in run.data.metrics
    files = {a.path for a in mlc.list_artifacts(result.run_id, "eval")}
    assert {"eval/confusion_matrix.png", "eval/confusion_matrix.json", "eval/classification_report.txt",
            "eval/embeddings_pca.png"} <= files
    assert ("eval/curves.png" in files) == (mode == "linear")
    cm = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/eval/confusion_matrix.json"))
    assert sum(map(sum, cm["confusion"])) == 300


@pytest.mark.slow
def test_each_mode_end_to_end_under_accelerate_launch(pretrained, tmp_path):
    p = pretrained
    common = [f"data.shards={p['shards']}", f"run.tracking_uri={p['uri']}", "finetune.tsne=false"]
    runs = {}
    for mode, spec in (("finetune", p["run_id"]), ("linear", f"runs:/{p['run_id']}"), ("knn", str(p["root"] / "mae")),
                       ("scratch", "none")):
        extra = ["run.epochs=2", "run.experiment=handoff"] if mode in ("finetune", "scratch") else []
        out = launch("finetune.py", "configs/mnist012/finetune.yaml",
                     common + extra + [f"finetune.pretrained={spec}", f"run.output_dir={tmp_path / mode}",
                                       f"finetune.mode={'finetune' if mode == 'scratch' else mode}"], tmp_path)
        runs[mode] = out.stdout.strip().splitlines()[-1].split(": ")[1]
    mlc = client(p["root"])
    for mode, run_id in runs.items():
        run = mlc.get_run(run_id)
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        want = "none" if mode == "scratch" else p["run_id"]
        assert run.data.tags["vitssl.pretrain_run_id"] == want
    assert "mlflow.parentRunId" not in mlc.get_run(runs["scratch"]).data.tags
    assert len(metric(mlc, runs["finetune"], "epoch_loss")) == 2
    assert {a.path for a in mlc.list_artifacts(runs["finetune"], "eval")} >= {"eval/curves.png"}
    ckpts = list((tmp_path / "finetune").glob("checkpoint-*"))
    assert len(ckpts) == 1 and "head" in torch.load(ckpts[0] / "encoder.pt", weights_only=True)


def test_probe_head_start_is_the_linear_probe_folded_into_the_head(mnist012):
    """finetune.head_init=probe (LP-FT): the head starts as the probe fitted on standardised frozen
    features, so on raw features it gives the probe's logits."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    from vitssl.eval import split_features, standardise, train_linear_probe

    cfg = load_config(FinetuneConfig, FINETUNE, [f"data.shards={mnist012}", "finetune.head_init=probe"])
    torch.manual_seed(0)
    model = Classify(ViT(ViTOptions(depth=2)), ClassifyOptions(num_classes=3))
    accelerator = Accelerator(cpu=True)
    engine._start_from_probe(SimpleNamespace(accelerator=accelerator), cfg, model)
    features, labels = split_features(accelerator, model.encoder, str(mnist012), "train", 256)
    (standardised,) = standardise(features)
    ft = cfg.finetune
    probe = train_linear_probe(standardised, labels, standardised, labels, 3, ft.linear_steps, ft.linear_lr,
                               ft.linear_weight_decay, seed=cfg.run.seed).head
    with torch.no_grad():
        torch.testing.assert_close(model.head(features), probe(standardised), atol=1e-4, rtol=1e-4)
        assert (model.head(features).argmax(1) == labels).float().mean() > 0.6  # a random head: about 1/3


@pytest.mark.slow
def test_two_process_probe_head_start_is_the_one_process_probe(pretrained, tmp_path):
    """LP-FT under 2 processes: the probe is fitted on the features gathered from both ranks, so the
    head starts where a 1-process run's does. An lr of 1e-12 leaves the saved head at its start."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    p = pretrained
    overrides = [f"finetune.pretrained={p['checkpoint']}", "finetune.head_init=probe", "optim.lr=1e-12",
                 "optim.min_lr=0", "run.epochs=1", "run.max_steps=1", "data.batch_size=16"]
    launch("finetune.py", "configs/mnist012/finetune.yaml",
           [f"data.shards={p['shards']}", f"run.tracking_uri={p['uri']}", "finetune.tsne=false",
            f"run.output_dir={tmp_path / 'two'}", *overrides], tmp_path, nproc=2)
    (ckpt,) = (tmp_path / "two").glob("checkpoint-*")
    two = torch.load(ckpt / "encoder.pt", weights_only=True)["head"]

    cfg = ft_config(p, tmp_path / "one", *overrides)
    model = Classify(build_encoder(cfg, resolve_pretrained(cfg.finetune.pretrained, p["uri"])),
                     ClassifyOptions(num_classes=3))
    engine._start_from_probe(SimpleNamespace(accelerator=Accelerator(cpu=True)), cfg, model)
    torch.testing.assert_close(two["weight"], model.head.weight.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(two["bias"], model.head.bias.detach(), atol=1e-5, rtol=1e-4)
    assert model.head.weight.abs().max() > 1e-3  # a fitted probe, not an untouched zero head
