"""The skeleton every run shares: pretraining, fine-tuning, linear probing and kNN.

    with RunSession(cfg, experiment, run_name, tags) as run:   # accelerator, seed, output folder + config
        run.start_tracking(params)                              # or, to train:
        fit = run.fit(model, export, ...)                       # plan, optimizer, trainer, resume, fit

Leaving the block sets the MLflow run's final status (FINISHED, KILLED after a stop request, FAILED
on an exception) and waits for every process. Each run type only says what differs: its model,
its export, its tags and what it reports.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from vitssl.config import ConfigError, flatten
from vitssl.data.checks import check_run_data
from vitssl.data.fetch import ReadLimits, configure_reads
from vitssl.engine.accelerator import build_accelerator
from vitssl.engine.checkpoint import (
    COMPLETE,
    CONFIG_FILE,
    TRAINER_STATE,
    Checkpointer,
    latest_checkpoint,
    remove_partial,
)
from vitssl.engine.lock import lock_run_folder
from vitssl.engine.optimizer import build_optimizer
from vitssl.engine.plan import TrainingPlan, make_training_plan
from vitssl.engine.trainer import FitResult, Trainer, TrainerOptions
from vitssl.redaction import redact_argv, redact_spec, redacted_dump, redacted_yaml
from vitssl.tracking.buffered import BufferedRun
from vitssl.tracking.lineage import log_run_lineage, source_tags
from vitssl.tracking.system_metrics import SystemMetrics


def resume_folder(cfg, root: Path) -> Path | None:
    mode = cfg.run.resume
    if mode == "never":
        return None
    if mode == "auto":
        return latest_checkpoint(root)
    folder = Path(mode)
    if not (folder / COMPLETE).is_file():
        raise ConfigError(f"run.resume={mode!r}: not a complete checkpoint folder (no {COMPLETE} marker); "
                          "use auto, never, or the path of a checkpoint-* folder")
    return folder


# what makes a run the run it is: resuming a checkpoint with other values would silently mix two runs
IDENTITY_KEYS = ("data.shards", "objective.", "finetune.pretrained", "finetune.mode")


def check_resumable(cfg, folder: Path) -> None:
    """One ConfigError when the checkpoint in ``folder`` was trained on another data source or objective
    than ``cfg`` asks for (compared as stored: redacted). A checkpoint without a config passes."""
    try:
        stored = flatten(yaml.safe_load((folder / CONFIG_FILE).read_text()) or {})
    except (OSError, yaml.YAMLError):
        return
    wanted = flatten(redacted_dump(cfg))
    for key in sorted(set(stored) & set(wanted)):
        if key.startswith(IDENTITY_KEYS) and str(stored[key]) != str(wanted[key]):
            raise ConfigError(
                f"run.resume={cfg.run.resume}: {folder} was trained with {key}={stored[key]!r}, this command has "
                f"{wanted[key]!r}: start a new run with another run.name (or run.resume=never to overwrite), or "
                f"resume with the same {key}")


def announce_resume(folder: Path, cfg) -> None:
    try:
        step = json.loads((folder / TRAINER_STATE).read_text()).get("step")
    except (OSError, ValueError):
        step = "?"
    print(f"resuming run {cfg.run.name!r} from {folder} (step {step}); to start fresh instead: run.resume=never "
          f"or another run.name", flush=True)


def run_name_with(base: str, *parts: str) -> str:
    """``base`` and the ``parts`` it does not carry yet: ``ft-knn`` + (mae, knn, s0) -> ``ft-knn-mae-s0``."""
    have = base.split("-")
    return "-".join([base, *(p for p in parts if p not in have)])


def common_tags(accelerator: Accelerator) -> dict[str, str]:
    return {"world_size": str(accelerator.num_processes),
            "precision": str(accelerator.mixed_precision), "device": str(accelerator.device),
            "distributed_type": str(accelerator.distributed_type), "torch": torch.__version__,
            "command": redact_argv(sys.argv)}


class RunSession:
    def __init__(self, cfg, experiment: str, run_name: str, tags: dict[str, str],
                 accelerator: Accelerator | None = None):
        self.cfg = cfg
        self.accelerator = accelerator or build_accelerator(cfg.run, cfg.data.batch_size)
        d = cfg.data
        configure_reads(ReadLimits(d.read_min_bytes_per_s, d.read_stall_s, d.read_deadline_s, d.read_retries))
        set_seed(cfg.run.seed)  # same initial weights on every process
        self.out_dir = Path(cfg.run.resolved_output_dir())
        self.run_name = run_name
        self.tags = tags | common_tags(self.accelerator)
        if cfg.run.parent_run_id and "mlflow.parentRunId" not in tags:
            self.tags["mlflow.parentRunId"] = cfg.run.parent_run_id
        self.tags |= {k: redact_spec(v) for k, v in cfg.run.tags.items()}
        if self.is_main:  # + mlflow.user, mlflow.source.* (git commit), as mlflow.start_run would set them
            self.tags = source_tags(self.tags)
        self.tracker = BufferedRun(self.accelerator.is_main_process, cfg.run.tracking_uri, experiment, self.out_dir,
                                   required=cfg.run.tracking_required)
        self.lock = None
        self.system_metrics = SystemMetrics(cfg.run.system_metrics and self.tracker.enabled,
                                            self.tracker.tracking_uri)
        # a new run's dataset inputs, (context, split) pairs of cfg.data.shards, and more lineage to log
        self.inputs = [("training", cfg.data.split), ("evaluation", cfg.data.eval_split)]
        self.on_new_run: Callable[[str], None] | None = None
        self.trainer: Trainer | None = None
        self.interrupted = False

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def __enter__(self) -> RunSession:
        # Labels, channels and image size against the config: one line, before any step. A reader that
        # crops (data.crop) takes images of any size, so only the size check is skipped then.
        check_run_data(self.cfg, crop_on_read=self.cfg.data.crop != "none")
        self.resume = resume_folder(self.cfg, self.out_dir)  # a bad run.resume fails before anything is written
        if self.resume is not None:
            check_resumable(self.cfg, self.resume)
            if self.is_main:
                announce_resume(self.resume, self.cfg)
        self.lock = lock_run_folder(self.accelerator, self.out_dir)  # one owner per folder, before any write
        try:
            if self.is_main:
                self._end_dead_owners_run()
                remove_partial(self.out_dir)  # ours now: what a killed save left is garbage
                (self.out_dir / CONFIG_FILE).write_text(redacted_yaml(self.cfg))
        except BaseException:  # a stop signal here too: leave no lock behind
            self.lock.release()
            raise
        return self

    def _end_dead_owners_run(self) -> None:
        """A trainer killed outright (SIGKILL, a lost node) left its MLflow run RUNNING: mark it KILLED
        (a resume reopens it as RUNNING right after)."""
        run_id = (self.lock.taken_over or {}).get("mlflow_run_id") if self.lock is not None else None
        if run_id is None or not self.tracker.enabled:
            return
        import mlflow

        try:
            client = mlflow.MlflowClient(self.tracker.tracking_uri)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="KILLED")
                print(f"MLflow run {run_id} of the trainer that died in {self.out_dir} marked KILLED")
        except Exception as err:  # the store unreachable now: the start that follows says so
            print(f"warning: could not mark the dead trainer's MLflow run {run_id} KILLED ({type(err).__name__})")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.system_metrics.stop()
            if exc_type is not None:
                if getattr(self.trainer, "bar", None) is not None:
                    self.trainer.bar.close()  # so the error line that follows starts a line of its own
                self.tracker.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
                return
            self.tracker.end("KILLED" if self.interrupted else "FINISHED")
            self.accelerator.wait_for_everyone()
        finally:
            if self.lock is not None:
                self.lock.release()

    def start_tracking(self, params: dict, run_id: str | None = None) -> str | None:
        """Create (or reopen, on resume) the MLflow run; a new run gets the config as params and artifact."""
        run_id_now = self.tracker.start(self.run_name, self.tags, run_id=run_id)
        if self.lock is not None and run_id_now is not None:
            self.lock.record(mlflow_run_id=run_id_now)
        if run_id is None and self.tracker.enabled:
            self.tracker.log_params(flatten(redacted_dump(self.cfg)) | params)
            self.tracker.log_text(redacted_yaml(self.cfg), CONFIG_FILE)
            if self.tracker.offline:  # lineage goes straight to the server: log it on a later start
                print("warning: tracking server unreachable; dataset inputs and lineage not logged for this run")
            else:
                log_run_lineage(self.tracker.tracking_uri, run_id_now, self.accelerator, self.cfg.data.shards,
                                self.inputs)
            if self.on_new_run is not None:
                self.on_new_run(run_id_now)
        self.system_metrics.start(run_id_now, resumed=run_id is not None)
        return run_id_now

    def fit(self, model: torch.nn.Module, export: Callable[[torch.nn.Module], dict], describe: str,
            lr_scale: dict[str, float] | None = None, figure_batch: dict | None = None) -> FitResult:
        """Plan, optimizer, trainer, resume, tracking, fit. `export`: unwrapped model -> encoder export."""
        cfg, acc = self.cfg, self.accelerator
        plan: TrainingPlan = make_training_plan(cfg, acc, model.sample_transform())
        sch = plan.schedule
        optimizer = build_optimizer(model, cfg.optim, sch.peak_lr, lr_scale,
                                    fused=acc.distributed_type != DistributedType.DEEPSPEED)
        checkpointer = Checkpointer(self.out_dir, cfg.run.checkpoint_every, cfg.run.keep_checkpoints, export,
                                    redacted_yaml(cfg))
        trainer = self.trainer = Trainer(acc, model, optimizer, plan, self.tracker, checkpointer,
                                         TrainerOptions.from_run(cfg.run), figure_batch)
        folder = self.resume
        if folder is not None:
            trainer.resume_from(folder)
            acc.print(f"resumed from {folder} (epoch {trainer.state.epoch}, step {trainer.state.step})")
        resumed_run = trainer.state.mlflow_run_id
        trainer.state.mlflow_run_id = self.start_tracking(
            {"derived.global_batch": plan.global_batch, "derived.peak_lr": sch.peak_lr,
             "derived.steps_per_epoch": sch.steps_per_epoch, "derived.world_size": acc.num_processes},
            run_id=resumed_run)
        if resumed_run is not None:
            trainer.logged_through = self.tracker.last_step(("loss", "epoch_loss"))
        acc.print(f"{describe}: {acc.num_processes} process(es) on {acc.device}, precision {acc.mixed_precision}, "
                  f"global batch {plan.global_batch}, {plan.lr_rule}, {sch.steps_per_epoch} steps/epoch x "
                  f"{cfg.run.epochs} epochs"
                  + (f", stopping at step {sch.total_steps} (run.max_steps)" if cfg.run.max_steps else ""))
        result = trainer.fit()
        self.interrupted = result.interrupted
        return result
