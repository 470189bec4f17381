"""Pretraining run: build everything from a validated config and drive the Trainer."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from vitssl.config import PretrainConfig, flatten, to_yaml
from vitssl.data import make_eval_loader
from vitssl.engine.builders import build_accelerator, build_optimizer, make_training_plan
from vitssl.engine.checkpoint import latest_checkpoint
from vitssl.engine.trainer import FitResult, Trainer
from vitssl.models import encoder_export
from vitssl.objectives import build_objective, parse_options
from vitssl.tracking import MlflowRun, git_commit


def resume_folder(cfg: PretrainConfig, root: Path) -> Path | None:
    mode = cfg.run.resume
    if mode == "never":
        return None
    if mode == "auto":
        return latest_checkpoint(root)
    folder = Path(mode)
    if not folder.is_dir():
        raise FileNotFoundError(f"run.resume={mode!r}: no such checkpoint folder (use auto, never, or a path)")
    return folder


def run_pretrain(cfg: PretrainConfig) -> FitResult:
    parse_options(cfg)  # objective options fail here, before any process does work
    accelerator = build_accelerator(cfg.run, cfg.data.batch_size)
    set_seed(cfg.run.seed)  # same initial weights on every process
    objective = build_objective(cfg)
    world = accelerator.num_processes
    transform = objective.sample_transform()
    make_loader, schedule, global_batch, peak_lr, lr_rule = make_training_plan(cfg, accelerator, transform)
    steps_per_epoch = schedule.steps_per_epoch

    out_dir = Path(cfg.run.resolved_output_dir())
    figure_batch = None
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
        figure_batch = next(iter(make_eval_loader(cfg.data.shards, cfg.data.eval_split, batch_size=8,
                                                  transform=transform, check_sha=cfg.data.check_sha)))
    tracker = MlflowRun(accelerator.is_main_process, cfg.run.tracking_uri, cfg.run.experiment)
    optimizer = build_optimizer(objective, cfg.optim, peak_lr)

    def export_encoder() -> dict:
        encoder = accelerator.unwrap_model(trainer.model).encoder
        return encoder_export(encoder) | {"objective": cfg.objective["name"], "config": cfg.model_dump(mode="json")}

    trainer = Trainer(accelerator, objective, optimizer, make_loader, schedule, tracker, out_dir,
                      cfg.run.checkpoint_every, cfg.run.keep_checkpoints, cfg.run.log_every, cfg.run.grad_clip,
                      global_batch, export_encoder, to_yaml(cfg), figure_batch)
    folder = resume_folder(cfg, out_dir)
    if folder is not None:
        trainer.resume_from(folder)
        accelerator.print(f"resumed from {folder} (epoch {trainer.state.epoch}, step {trainer.state.step})")

    run_id = tracker.start(cfg.run.run_name or cfg.run.name, run_tags(cfg, accelerator),
                           run_id=trainer.state.mlflow_run_id)
    trainer.state.mlflow_run_id = run_id
    if folder is None and accelerator.is_main_process:
        tracker.log_params(flatten(cfg.model_dump(mode="json")) | {
            "derived.global_batch": global_batch, "derived.peak_lr": peak_lr,
            "derived.steps_per_epoch": steps_per_epoch, "derived.world_size": world})
        tracker.log_text(to_yaml(cfg), "config.yaml")
    accelerator.print(f"{cfg.objective['name']}: {world} process(es) on {accelerator.device}, "
                      f"precision {accelerator.mixed_precision}, global batch {global_batch}, {lr_rule}, "
                      f"{steps_per_epoch} steps/epoch x {cfg.run.epochs} epochs")
    try:
        result = trainer.fit()
    except BaseException:
        tracker.end("FAILED")
        raise
    trainer.log_curves()
    if accelerator.is_main_process and result.checkpoint is not None:
        tracker.set_tags({"checkpoint": str(result.checkpoint.resolve())})
    tracker.end("KILLED" if result.interrupted else "FINISHED")
    accelerator.wait_for_everyone()
    return result


def run_tags(cfg: PretrainConfig, accelerator) -> dict[str, str]:
    tags = {"vitssl.stage": "pretrain", "vitssl.objective": cfg.objective["name"],
            "git_commit": git_commit(), "world_size": str(accelerator.num_processes),
            "precision": str(accelerator.mixed_precision), "device": str(accelerator.device),
            "distributed_type": str(accelerator.distributed_type), "torch": torch.__version__,
            "command": " ".join(sys.argv)}
    if cfg.run.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.run.parent_run_id
    return tags | cfg.run.tags
