"""Pretraining run: a pretext objective on the run skeleton (vitssl.engine.run)."""
from __future__ import annotations

import torch

from vitssl.config import PretrainConfig
from vitssl.data import EvalLoader
from vitssl.engine.accelerator import build_accelerator
from vitssl.engine.checkpoint import ENCODER_FILE
from vitssl.engine.model_init import load_init, resolve_init
from vitssl.engine.run import RunSession
from vitssl.engine.trainer import FitResult
from vitssl.models import encoder_export
from vitssl.objectives import build_objective, parse_options
from vitssl.redaction import redacted_dump
from vitssl.tracking.encoder_model import log_encoder


def run_pretrain(cfg: PretrainConfig) -> FitResult:
    parse_options(cfg)  # objective options fail here, before any process does work
    name = cfg.objective["name"]
    accelerator = build_accelerator(cfg.run, cfg.data.batch_size)
    cfg, init = resolve_init(cfg, accelerator.print)  # model.init: the model section becomes the weights'
    session = RunSession(cfg, cfg.run.experiment, cfg.run.run_name or cfg.run.name,
                         {"vitssl.stage": "pretrain", "vitssl.objective": name}, accelerator)
    with session as run:
        objective = build_objective(cfg)
        if init is not None:  # a resumed run then continues from its checkpoint instead
            load_init(objective, init, run.accelerator.print)
        figure_batch = None
        if cfg.run.figure_every:  # on every process: under ZeRO-3 all of them join the figures' forward
            figure_batch = next(iter(EvalLoader(cfg.data, batch_size=8, transform=objective.sample_transform())))

        def export(model) -> dict:
            return encoder_export(model.encoder) | {"objective": name, "config": redacted_dump(cfg)}

        result = run.fit(objective, export, name, figure_batch=figure_batch)
        run.trainer.log_curves()
        if run.is_main and result.checkpoint is not None:
            run.tracker.set_tags({"checkpoint": str(result.checkpoint.resolve())})
            if run.tracker.offline:
                run.accelerator.print("warning: tracking server unreachable: the encoder was not logged to "
                                      f"MLflow; it is in {result.checkpoint / ENCODER_FILE}")
            elif run.tracker.enabled and not result.interrupted:
                # the final checkpoint's export: an MLflow handoff loads the same bytes as a local-path one
                export = torch.load(result.checkpoint / ENCODER_FILE, map_location="cpu", weights_only=True)
                logged = log_encoder(run.tracker.tracking_uri, result.state.mlflow_run_id, export,
                                     step=result.state.step, register_as=cfg.run.register_as)
                run.accelerator.print(f"encoder: runs:/{result.state.mlflow_run_id}/{logged.name} = {logged.model_uri}"
                                      + (f" = {logged.registered_uri}" if logged.registered_uri else ""))
    return result
