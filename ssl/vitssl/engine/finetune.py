"""From a pretrained encoder to accuracy: fine-tune, linear probe or kNN, on the run skeleton.

Each mode says only what differs: the fine-tune trains a Classify (or, with `finetune.teacher`, a
label-free Distill) model with the Trainer; linear and kNN stream frozen features of every split
through the evaluation loaders on every process. All three end in the same report
(vitssl.eval.report). Finding and loading the encoder is vitssl.engine.pretrained.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from vitssl.config import ConfigError
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.pretrained import Pretrained, build_encoder, load_teacher, resolve_pretrained
from vitssl.engine.run import RunSession, run_name_with
from vitssl.engine.zero_gather import gathered_parameters
from vitssl.eval import knn_predict, split_features, standardise, stream_split, train_linear_probe
from vitssl.eval.embeddings import feature_stats
from vitssl.eval.report import SplitPredictions, report
from vitssl.models import DROP_PATH, LAYER_IDS, capabilities_of, encoder_export
from vitssl.objectives.classify import Classify, ClassifyOptions
from vitssl.objectives.distill import Distill, DistillOptions
from vitssl.redaction import redacted_dump
from vitssl.tracking.handoff import link_pretrained

EVAL_BATCH = 256


@dataclass
class FinetuneResult:
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted: bool = False  # stopped by SIGTERM/SIGINT after a checkpoint


def class_names(cfg: FinetuneConfig) -> list[str]:
    return cfg.finetune.class_names or [str(i) for i in range(cfg.finetune.num_classes)]


def layer_decay_scales(encoder: torch.nn.Module, decay: float, prefix: str = "encoder.") -> dict[str, float]:
    """LR multiplier decay^(top - layer_id) per parameter name: the deepest layer learns at the full LR."""
    if LAYER_IDS not in capabilities_of(encoder):
        raise ConfigError(f"finetune.layer_decay needs an encoder with layer ids; {type(encoder).__name__} has none")
    ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
    top = max(ids.values())
    return {f"{prefix}{name}": decay ** (top - i) for name, i in ids.items()}


def set_drop_path(encoder: torch.nn.Module, rate: float) -> None:
    """Stochastic depth for the fine-tune; a clear error for an encoder (a pretrained one included)
    without residual blocks to drop."""
    if DROP_PATH not in capabilities_of(encoder):
        raise ConfigError(f"finetune.drop_path needs an encoder with residual blocks to drop; "
                          f"{type(encoder).__name__} has none (use 0)")
    encoder.set_drop_path(rate)


def finetune_run_name(cfg: FinetuneConfig, objective: str) -> str:
    """``run.run_name``, else ``run.name`` and what it does not say yet: the encoder's objective (``scratch``
    for none), the mode, the seed (``ft`` -> ``ft-mae-knn-s0``; the study's ``mae-s0-knn`` stays as it is)."""
    parts = ("scratch" if objective == "none" else objective, cfg.finetune.mode, f"s{cfg.run.seed}")
    return cfg.run.run_name or run_name_with(cfg.run.name, *parts)


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    ft = cfg.finetune
    if cfg.model.init != "none":
        raise ConfigError(f"model.init={cfg.model.init!r} starts a pretraining run; a fine-tune starts from "
                          f"finetune.pretrained")
    pretrained = resolve_pretrained(ft.pretrained, cfg.run.tracking_uri, cfg.model)
    # The teacher is built before seeding, so the student starts exactly as a plain fine-tune would.
    teacher = load_teacher(ft.teacher, cfg.run.tracking_uri) if ft.teacher != "none" else None
    if teacher is not None and pretrained.scratch:
        pretrained = replace(pretrained, objective="distill")
    experiment = cfg.run.experiment
    if "experiment" not in cfg.run.model_fields_set and pretrained.experiment:
        experiment = pretrained.experiment  # beside the pretraining run unless run.experiment says otherwise
    name = finetune_run_name(cfg, str(pretrained.objective))
    with RunSession(cfg, experiment, name, run_tags(cfg, pretrained)) as run:
        run.inputs = [("training", cfg.data.split)] + [("evaluation", split) for split in ft.splits(cfg.data)]
        if pretrained.handoff is not None:  # the run records the exact logged model it consumed
            run.on_new_run = partial(link_pretrained, run.tracker.tracking_uri, handoff=pretrained.handoff)
        encoder = build_encoder(cfg, pretrained, run.accelerator.print)
        if ft.mode == "finetune":
            return _finetune(run, cfg, encoder, pretrained, teacher)
        return _frozen(run, cfg, encoder)


def run_tags(cfg: FinetuneConfig, pretrained: Pretrained) -> dict[str, str]:
    tags = {"vitssl.stage": "finetune", "vitssl.mode": cfg.finetune.mode,
            "vitssl.objective": pretrained.objective, "vitssl.pretrain_run_id": pretrained.run_id or "none",
            "vitssl.seed": str(cfg.run.seed), "vitssl.pretrained_source": pretrained.source,
            "vitssl.teacher": cfg.finetune.teacher}
    parent = cfg.run.parent_run_id or pretrained.run_id  # a study's stages are all its children
    if parent:
        tags["mlflow.parentRunId"] = parent
    return tags


def _finetune(run: RunSession, cfg: FinetuneConfig, encoder, pretrained: Pretrained, teacher) -> FinetuneResult:
    ft = cfg.finetune
    head = ft.head_options()
    if teacher is not None:
        model = Distill(encoder, DistillOptions(**head, temperature=ft.distill_temperature), teacher)
    else:
        model = Classify(encoder, ClassifyOptions(**head))
    lr_scale = layer_decay_scales(encoder, ft.layer_decay) if ft.layer_decay else None
    if ft.drop_path:
        set_drop_path(encoder, ft.drop_path)
    if ft.head_init == "probe" and teacher is None:
        _start_from_probe(run, cfg, model)

    def export(m) -> dict:
        return encoder_export(m.encoder) | {
            "head": {k: v.detach().cpu() for k, v in m.head.state_dict().items()},
            "objective": "classify", "pretrained_objective": pretrained.objective,
            "config": redacted_dump(cfg)}

    t0 = time.perf_counter()
    fit = run.fit(model, export, f"finetune {pretrained.objective} encoder (layer decay {ft.layer_decay})",
                  lr_scale=lr_scale)
    result = FinetuneResult(fit.state.mlflow_run_id, checkpoint=fit.checkpoint, interrupted=fit.interrupted)
    if fit.interrupted:
        return result
    net = run.accelerator.unwrap_model(run.trainer.model)
    net.eval()
    dtype = run.trainer.input_dtype  # bf16 when DeepSpeed cast the model (nothing autocasts it)

    def predict(x):
        x = x.to(dtype)
        return {"logits": net.logits(x).float(), "features": net.embed(x).float()}

    splits = []
    with gathered_parameters(run.accelerator, net):  # ZeRO-3: whole weights for a forward outside the engine
        for split in ft.splits(cfg.data):
            out = stream_split(run.accelerator, cfg.data, split, EVAL_BATCH, predict, cfg.data.check_sha)
            splits.append(SplitPredictions(split, out["logits"].argmax(1), out["label"], out["features"]))
    if run.is_main:
        h = fit.state.history
        curves = {"loss": {"train (epoch mean)": h.get("epoch_loss", [])},
                  "accuracy": {"train (epoch mean)": h.get("epoch_accuracy", [])}}
        result.metrics = report(run.tracker, run.out_dir, ft.mode, class_names(cfg), splits, curves, "epoch",
                                {"train_time_s": time.perf_counter() - t0}, ft.tsne, cfg.run.seed)
    return result


def _start_from_probe(run: RunSession, cfg: FinetuneConfig, model: Classify) -> None:
    """LP-FT: fit the linear probe on the frozen encoder's features of the (un-augmented) training
    split, and start the head from it, its standardisation folded into the weights, so the first
    steps do not send a random head's gradients into the pretrained features. Every process fits
    the same probe (same features, seeded)."""
    ft = cfg.finetune
    features, labels = split_features(run.accelerator, model.encoder.to(run.accelerator.device), cfg.data,
                                      cfg.data.split, max(cfg.data.batch_size, EVAL_BATCH), ft.pool,
                                      cfg.data.check_sha)
    features, labels = features.float().cpu(), labels.cpu()
    mean, scale = feature_stats(features)
    standardised = (features - mean) / scale
    probe = train_linear_probe(standardised, labels, standardised, labels, ft.num_classes, ft.linear_steps,
                               ft.linear_lr, ft.linear_weight_decay, seed=cfg.run.seed).head
    with torch.no_grad():
        weight = probe.weight / scale
        model.head.weight.copy_(weight)
        model.head.bias.copy_(probe.bias - weight @ mean)


def _frozen(run: RunSession, cfg: FinetuneConfig, encoder) -> FinetuneResult:
    ft, acc = cfg.finetune, run.accelerator
    run_id = run.start_tracking({"derived.world_size": acc.num_processes})
    encoder = encoder.to(acc.device)
    t0 = time.perf_counter()

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = max(cfg.data.batch_size, EVAL_BATCH)
        return split_features(acc, encoder, cfg.data, split, batch, ft.pool, cfg.data.check_sha)

    train_f, train_y = features(cfg.data.split)
    evals = {split: features(split) for split in ft.splits(cfg.data)}
    feature_s = time.perf_counter() - t0
    result = FinetuneResult(run_id)
    if not run.is_main:  # the features are on every process; one fits the probe and reports
        return result
    curves: dict = {}
    splits = []
    if ft.mode == "linear":
        first = next(iter(evals))
        tr, *others = standardise(train_f, *(f for f, _ in evals.values()))
        probe = train_linear_probe(tr, train_y, others[0], evals[first][1], ft.num_classes, ft.linear_steps,
                                   ft.linear_lr, ft.linear_weight_decay, seed=cfg.run.seed)
        h = probe.history
        curves = {"loss": {"train": h["train_loss"]},
                  "accuracy": {"train": h["train_accuracy"], first: h["test_accuracy"]}}
        for name, points in h.items():
            for step, value in points:
                run.tracker.log_metrics({f"probe_{name}": value}, step)
        with torch.no_grad():
            for (split, (f, y)), std in zip(evals.items(), others, strict=True):
                splits.append(SplitPredictions(split, probe.head(std).argmax(1), y, f))
    else:
        for split, (f, y) in evals.items():
            pred, _ = knn_predict(train_f, train_y, f, ft.knn_k, ft.num_classes, ft.knn_temperature)
            splits.append(SplitPredictions(split, pred, y, f))
    result.metrics = report(run.tracker, run.out_dir, ft.mode, class_names(cfg), splits, curves, "step",
                            {"feature_time_s": feature_s, "eval_time_s": time.perf_counter() - t0}, ft.tsne,
                            cfg.run.seed)
    return result
