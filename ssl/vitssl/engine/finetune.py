"""From a pretrained encoder to test accuracy: fine-tune, linear probe or kNN, logged to MLflow.

resolve_pretrained:  `finetune.pretrained` (run id, runs:/<id>, checkpoint folder, pretrain output
                     dir, none) -> the checkpoint folder, its pretrain run and experiment.
load_encoder:        rebuild the encoder (ViT, CNN or Swin: vitssl.models.registry) from the saved
                     arguments and load exactly its weights.
run_finetune:        one of the three modes, then the same evaluation report for each. With
                     `finetune.teacher` the fine-tune is label-free distillation (objectives/distill.py).
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import set_seed

from vitssl.config import ConfigError, flatten, to_yaml
from vitssl.config.finetune import FinetuneConfig
from vitssl.data import load_split_tensors
from vitssl.engine.builders import build_accelerator, build_optimizer, make_training_plan
from vitssl.engine.checkpoint import CONFIG_FILE, ENCODER_FILE, TRAINER_STATE, latest_checkpoint
from vitssl.engine.pretrain import resume_folder
from vitssl.engine.trainer import Trainer
from vitssl.eval import classification_report, extract_features, knn_predict, standardise, train_linear_probe
from vitssl.eval.plots import confusion_figure, curves_figure, embedding_figure, project
from vitssl.models import ViT, encoder_export, encoder_from_export
from vitssl.objectives.base import build_encoder_from_config
from vitssl.objectives.classify import Classify, ClassifyOptions
from vitssl.objectives.distill import Distill, DistillOptions, FrozenClassifier
from vitssl.tracking import MlflowRun, git_commit, resolve_tracking_uri
from vitssl.tracking.plots import close

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class PretrainedError(ConfigError):
    """`finetune.pretrained` does not name a usable encoder; the message says why."""


@dataclass
class Pretrained:
    folder: Path | None  # None: from scratch
    run_id: str | None = None  # the pretraining MLflow run, when known
    experiment: str | None = None  # its experiment's name, when the run is in this tracking store
    objective: str = "none"


@dataclass
class FinetuneResult:
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


# ------------------------------------------------------------------------------ the handoff


def _run_of(client, run_id: str, spec: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise PretrainedError(f"finetune.pretrained={spec!r}: no MLflow run {run_id} in the tracking store "
                              f"{client.tracking_uri}") from None


def resolve_pretrained(spec: str, tracking_uri: str | None) -> Pretrained:
    """Find the checkpoint folder that `finetune.pretrained` names (see FinetuneOptions.pretrained)."""
    if spec == "none":
        return Pretrained(None)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    path = Path(spec)
    if path.is_dir():
        folder = path if (path / ENCODER_FILE).is_file() else latest_checkpoint(path)
        if folder is None:
            raise PretrainedError(
                f"finetune.pretrained={spec!r} is neither a checkpoint folder (with {ENCODER_FILE}) nor a pretrain "
                f"output dir holding complete checkpoint-* folders")
        run_id = None
        if (folder / TRAINER_STATE).is_file():
            run_id = json.loads((folder / TRAINER_STATE).read_text()).get("mlflow_run_id")
        experiment = None
        if run_id:
            try:
                experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name
            except Exception:  # the run lives in another store: keep its id, use run.experiment
                pass
        return Pretrained(folder, run_id, experiment, _objective(folder))
    run_id = spec[len("runs:/"):].strip("/").split("/")[0] if spec.startswith("runs:/") else spec
    if not RUN_ID.match(run_id):
        raise PretrainedError(f"finetune.pretrained={spec!r}: no such folder, and not an MLflow run id "
                              f"(32 hex digits or runs:/<id>); use none to train from scratch")
    run = _run_of(client, run_id, spec)
    ckpt = run.data.tags.get("checkpoint")
    if not ckpt:
        raise PretrainedError(f"finetune.pretrained={spec!r}: run {run_id} has no 'checkpoint' tag (not a "
                              f"finished vitssl pretrain run? status {run.info.status})")
    folder = Path(ckpt)
    if not (folder / ENCODER_FILE).is_file():
        raise PretrainedError(f"finetune.pretrained={spec!r}: run {run_id} points at {folder}, which has no "
                              f"{ENCODER_FILE} (moved or deleted?)")
    experiment = client.get_experiment(run.info.experiment_id).name
    return Pretrained(folder, run_id, experiment, run.data.tags.get("vitssl.objective") or _objective(folder))


def _objective(folder: Path) -> str:
    try:
        return str(torch.load(folder / ENCODER_FILE, map_location="cpu", weights_only=True).get("objective"))
    except Exception:
        return "unknown"


def load_encoder_weights(encoder: ViT, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every encoder weight, strictly: missing, unexpected or mis-shaped keys are one error listing them."""
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs encoder {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise PretrainedError(f"the encoder weights in {source} do not fit the encoder its arguments describe "
                              f"(another architecture?):\n  " + "\n  ".join(parts))
    encoder.load_state_dict(state_dict, strict=True)


def load_encoder(folder: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the encoder from `encoder.pt`'s saved arch and arguments and load exactly its weights."""
    path = folder / ENCODER_FILE
    if not path.is_file():
        raise PretrainedError(f"{folder} has no {ENCODER_FILE}: not a vitssl checkpoint folder")
    try:
        export = torch.load(path, map_location="cpu", weights_only=True)
        encoder = encoder_from_export(export)
        state_dict = export["state_dict"]
    except Exception as e:  # unpickling, a missing key, an unknown arch or argument: all mean "not an export"
        raise PretrainedError(f"{path} is not a vitssl encoder export ({type(e).__name__}: {e})") from None
    load_encoder_weights(encoder, state_dict, str(path))
    return encoder, export


def load_teacher(spec: str, tracking_uri: str | None) -> FrozenClassifier:
    """A fine-tuned classifier, frozen, as a distillation teacher. `spec` names its checkpoint as
    `finetune.pretrained` does; the export must hold the head (a finetune.mode=finetune run)."""
    found = resolve_pretrained(spec, tracking_uri)
    if found.folder is None:
        raise PretrainedError("finetune.teacher=none: distillation needs a fine-tuned classifier checkpoint")
    encoder, export = load_encoder(found.folder)
    if "head" not in export:
        raise PretrainedError(f"finetune.teacher={spec!r}: {found.folder} holds an encoder without a classifier "
                              f"head (a pretraining checkpoint?); use a finetune.mode=finetune run")
    weight = export["head"]["weight"]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(export["head"])
    return FrozenClassifier(encoder, head, export.get("config", {}).get("finetune", {}).get("pool", "cls"))


def build_encoder(cfg: FinetuneConfig, pretrained: Pretrained) -> torch.nn.Module:
    if pretrained.folder is None:
        return build_encoder_from_config(cfg)
    encoder, _ = load_encoder(pretrained.folder)
    a, d = encoder.args, cfg.data
    if (a.img_size, a.in_chans) != (d.image_size, d.channels):
        raise PretrainedError(f"the encoder in {pretrained.folder} takes {a.in_chans}x{a.img_size}x{a.img_size} "
                              f"images, data gives {d.channels}x{d.image_size}x{d.image_size} "
                              f"(data.image_size / data.channels)")
    return encoder


def layer_decay_scales(encoder: ViT, decay: float, prefix: str = "encoder.") -> dict[str, float]:
    """LR multipliers decay^(depth + 1 - layer): embeddings layer 0, block i layer i + 1, head/norm 1."""
    depth = len(encoder.blocks)
    scales = {f"{prefix}{name}": decay ** (depth + 1) for name in ("patch_embed.", "cls_token", "pos_embed")}
    scales |= {f"{prefix}blocks.{i}.": decay ** (depth - i) for i in range(depth)}
    return scales


# ------------------------------------------------------------------------------ the modes


def class_names(cfg: FinetuneConfig) -> list[str]:
    return cfg.finetune.class_names or [str(i) for i in range(cfg.finetune.num_classes)]


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    pretrained = resolve_pretrained(cfg.finetune.pretrained, cfg.run.tracking_uri)
    if cfg.finetune.mode == "finetune":
        return _finetune(cfg, pretrained)
    state = PartialState()
    result = FinetuneResult(None)
    if state.is_main_process:  # frozen features of a few hundred images: one process does it all
        result = _frozen(cfg, pretrained, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    state.wait_for_everyone()
    return result


def _tracker(cfg: FinetuneConfig, pretrained: Pretrained, main: bool) -> MlflowRun:
    experiment = cfg.run.experiment
    if "experiment" not in cfg.run.model_fields_set and pretrained.experiment:
        experiment = pretrained.experiment  # beside the pretraining run unless run.experiment says otherwise
    return MlflowRun(main, cfg.run.tracking_uri, experiment)


def run_tags(cfg: FinetuneConfig, pretrained: Pretrained, world: int) -> dict[str, str]:
    tags = {"vitssl.stage": "finetune", "vitssl.mode": cfg.finetune.mode,
            "vitssl.objective": pretrained.objective, "vitssl.pretrain_run_id": pretrained.run_id or "none",
            "vitssl.seed": str(cfg.run.seed), "pretrained_checkpoint": str(pretrained.folder or "none"),
            "vitssl.teacher": cfg.finetune.teacher, "git_commit": git_commit(), "world_size": str(world),
            "torch": torch.__version__, "command": " ".join(sys.argv)}
    parent = pretrained.run_id or cfg.run.parent_run_id
    if parent:
        tags["mlflow.parentRunId"] = parent
    return tags | cfg.run.tags


def _start(tracker: MlflowRun, cfg: FinetuneConfig, pretrained: Pretrained, world: int, extra: dict,
           run_id: str | None = None) -> str | None:
    name = cfg.run.run_name or f"{cfg.run.name}-{pretrained.objective}-{cfg.finetune.mode}-s{cfg.run.seed}"
    run_id = tracker.start(name, run_tags(cfg, pretrained, world), run_id=run_id)
    if tracker.enabled and run_id is not None:
        tracker.log_params(flatten(cfg.model_dump(mode="json")) | extra)
        tracker.log_text(to_yaml(cfg), "config.yaml")
    return run_id


def _finetune(cfg: FinetuneConfig, pretrained: Pretrained) -> FinetuneResult:
    ft = cfg.finetune
    accelerator = build_accelerator(cfg.run, cfg.data.batch_size)
    # The teacher is built before seeding, so the student starts exactly as a plain fine-tune would.
    teacher = load_teacher(ft.teacher, cfg.run.tracking_uri) if ft.teacher != "none" else None
    set_seed(cfg.run.seed)
    encoder = build_encoder(cfg, pretrained)
    common = dict(num_classes=ft.num_classes, pool=ft.pool, head_dropout=ft.head_dropout,
                  label_smoothing=ft.label_smoothing, augment=ft.augment, augment_degrees=ft.augment_degrees,
                  augment_translate=ft.augment_translate, augment_scale=ft.augment_scale,
                  randaugment=ft.randaugment, randaugment_ops=ft.randaugment_ops,
                  randaugment_magnitude=ft.randaugment_magnitude)
    if teacher is not None:
        model = Distill(encoder, DistillOptions(**common, temperature=ft.distill_temperature), teacher)
        if pretrained.folder is None:
            pretrained = replace(pretrained, objective="distill")
    else:
        model = Classify(encoder, ClassifyOptions(**common, mixup_alpha=ft.mixup_alpha))
    world = accelerator.num_processes
    make_loader, schedule, global_batch, peak_lr, lr_rule = make_training_plan(
        cfg, accelerator, model.sample_transform())
    steps_per_epoch = schedule.steps_per_epoch
    if ft.layer_decay and not isinstance(encoder, ViT):
        raise ConfigError(f"finetune.layer_decay needs a ViT encoder, this one is a {type(encoder).__name__}")
    lr_scale = layer_decay_scales(encoder, ft.layer_decay) if ft.layer_decay else None
    optimizer = build_optimizer(model, cfg.optim, peak_lr, lr_scale)
    out_dir = Path(cfg.run.resolved_output_dir())
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(to_yaml(cfg))
    tracker = _tracker(cfg, pretrained, accelerator.is_main_process)

    def export_encoder() -> dict:
        m = accelerator.unwrap_model(trainer.model)
        return encoder_export(m.encoder) | {
                "head": {k: v.detach().cpu() for k, v in m.head.state_dict().items()},
                "objective": "classify", "pretrained_objective": pretrained.objective,
                "config": cfg.model_dump(mode="json")}

    trainer = Trainer(accelerator, model, optimizer, make_loader, schedule, tracker, out_dir,
                      cfg.run.checkpoint_every, cfg.run.keep_checkpoints, cfg.run.log_every, cfg.run.grad_clip,
                      global_batch, export_encoder, to_yaml(cfg))
    folder = resume_folder(cfg, out_dir)
    if folder is not None:
        trainer.resume_from(folder)
        accelerator.print(f"resumed from {folder} (epoch {trainer.state.epoch}, step {trainer.state.step})")
    run_id = _start(tracker, cfg, pretrained, world, {"derived.global_batch": global_batch,
                                                      "derived.peak_lr": peak_lr,
                                                      "derived.steps_per_epoch": steps_per_epoch},
                    run_id=trainer.state.mlflow_run_id)
    trainer.state.mlflow_run_id = run_id
    accelerator.print(f"finetune {pretrained.objective} encoder: {world} process(es) on {accelerator.device}, "
                      f"global batch {global_batch}, {lr_rule}, layer decay {ft.layer_decay}, "
                      f"{steps_per_epoch} steps/epoch x {cfg.run.epochs} epochs")
    t0 = time.perf_counter()
    try:
        fit = trainer.fit()
    except BaseException:
        tracker.end("FAILED")
        raise
    result = FinetuneResult(run_id, checkpoint=fit.checkpoint)
    if fit.interrupted:
        tracker.end("KILLED")
        return result
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(trainer.model)
        images, labels, _ = load_split_tensors(cfg.data.shards, cfg.data.eval_split)
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net.logits(images[i:i + 256].to(accelerator.device)).float().cpu()
                                for i in range(0, len(images), 256)])
        feats = extract_features(net.encoder, images, device=accelerator.device, pool=ft.pool)
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracker.tracking_uri)
        curves = {"loss": {"train (epoch mean)": _history(client, run_id, "epoch_loss")},
                  "accuracy": {"train (epoch mean)": _history(client, run_id, "epoch_accuracy")}}
        result.metrics = _report(tracker, cfg, logits.argmax(1), labels, feats, curves, "epoch",
                                 {"train_time_s": time.perf_counter() - t0})
    tracker.end("FINISHED")
    accelerator.wait_for_everyone()
    return result


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [(i + 1, m.value) for i, m in enumerate(points)]


def _frozen(cfg: FinetuneConfig, pretrained: Pretrained, device: torch.device) -> FinetuneResult:
    ft = cfg.finetune
    set_seed(cfg.run.seed)
    encoder = build_encoder(cfg, pretrained).to(device)
    tracker = _tracker(cfg, pretrained, True)
    run_id = _start(tracker, cfg, pretrained, 1, {})
    try:
        t0 = time.perf_counter()
        train_x, train_y, _ = load_split_tensors(cfg.data.shards, cfg.data.split)
        test_x, test_y, _ = load_split_tensors(cfg.data.shards, cfg.data.eval_split)
        train_f = extract_features(encoder, train_x, device=device, pool=ft.pool)
        test_f = extract_features(encoder, test_x, device=device, pool=ft.pool)
        feature_s = time.perf_counter() - t0
        curves: dict = {}
        if ft.mode == "linear":
            tr, te = standardise(train_f, test_f)
            probe = train_linear_probe(tr, train_y, te, test_y, ft.num_classes, ft.linear_steps, ft.linear_lr,
                                       ft.linear_weight_decay, seed=cfg.run.seed)
            pred = probe.test_logits.argmax(1)
            h = probe.history
            curves = {"loss": {"train": h["train_loss"]},
                      "accuracy": {"train": h["train_accuracy"], "test": h["test_accuracy"]}}
            for name, points in h.items():
                for step, value in points:
                    tracker.log_metrics({f"probe_{name}": value}, step)
        else:
            pred, _ = knn_predict(train_f, train_y, test_f, ft.knn_k, ft.num_classes, ft.knn_temperature)
        metrics = _report(tracker, cfg, pred, test_y, test_f, curves, "step",
                          {"feature_time_s": feature_s, "eval_time_s": time.perf_counter() - t0})
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return FinetuneResult(run_id, metrics)


# ------------------------------------------------------------------------------ the report


def _report(tracker: MlflowRun, cfg: FinetuneConfig, pred: torch.Tensor, labels: torch.Tensor,
            feats: torch.Tensor, curves: dict, xlabel: str, extra: dict[str, float]) -> dict[str, float]:
    """Metrics, confusion matrix (PNG + JSON), classification report, PCA / t-SNE, curves -> MLflow."""
    names = class_names(cfg)
    rep = classification_report(labels.numpy(), pred.numpy(), names)
    metrics = rep.metrics("test_") | {k: v for k, v in extra.items() if v}
    tracker.log_metrics(metrics, 0)
    title = f"{cfg.finetune.mode}: test accuracy {rep.accuracy:.2%}"
    tracker.log_text(json.dumps(rep.to_json(), indent=2), "eval/confusion_matrix.json")
    tracker.log_text(rep.text, "eval/classification_report.txt")
    figures = {"eval/confusion_matrix.png": confusion_figure(rep.confusion, names, title)}
    y = labels.numpy()
    for method in ("pca", "tsne") if cfg.finetune.tsne else ("pca",):
        points = project(feats.numpy().astype(np.float64), method, seed=cfg.run.seed)
        figures[f"eval/embeddings_{method}.png"] = embedding_figure(
            points, y, names, f"{method.upper()} of test embeddings ({cfg.finetune.mode})")
    if curves:
        figures["eval/curves.png"] = curves_figure(curves, xlabel, f"{cfg.finetune.mode} training")
    for path, fig in figures.items():
        tracker.log_figure(fig, path)
        close(fig)
    out = Path(cfg.run.resolved_output_dir())
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_metrics.json").write_text(json.dumps(metrics | {"confusion": rep.confusion}, indent=2))
    print(f"{cfg.finetune.mode}: test accuracy {rep.accuracy:.4f} "
          f"({int(metrics['test_errors'])} errors of {len(y)})\n{rep.text}")
    return metrics


