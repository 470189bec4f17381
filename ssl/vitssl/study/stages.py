"""What one study stage does inside a scheduler worker: pretrain, fine-tune / linear / kNN, pixel baselines.

Each stage runs in-process with a one-process accelerator (the worker's slot: a share of the CPU
threads or one GPU), writes its own log file and returns plain data (run id, seconds, images/s,
metrics) to the study. Runs are children of the study's MLflow run (`run.parent_run_id`).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

EVAL_SPLITS = ("test", "test_large", "val")  # the report's figures are of the first


def split_count(shards: str | Path, split: str) -> int:
    """Images in a split of any `data.shards` (a folder, a base URL, a URL list), from its manifest."""
    from vitssl.data.sources import source_manifest

    return int(source_manifest(shards, [split])["splits"][split]["count"])


@contextlib.contextmanager
def _logged(log: str | Path):
    """Send the stage's prints to its own log file."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def _run_stage(log: str, schema, config: str, overrides: list[str], run) -> tuple:
    """Load the config and run one stage in this worker, its prints in `log`: (config, result, seconds)."""
    from vitssl.config import load_config
    from vitssl.engine.accelerator_reset import forget_accelerator_state

    with _logged(log):
        # A worker runs many stages: each builds its own Accelerator, as a fresh process would.
        forget_accelerator_state()
        cfg = load_config(schema, config, overrides)
        t0 = time.perf_counter()
        result = run(cfg)
        return cfg, result, time.perf_counter() - t0


def trained_images(cfg) -> int:
    """Training images a stage processes: run.epochs of its split, or fewer when run.max_steps stops
    it first (a stage runs in one process, so a step is one batch)."""
    images = cfg.run.epochs * split_count(cfg.data.shards, cfg.data.split)
    if cfg.run.max_steps is not None:
        images = min(images, cfg.run.max_steps * cfg.data.batch_size)
    return images


def pretrain(config: str, overrides: list[str], log: str) -> dict:
    from vitssl.config import PretrainConfig
    from vitssl.engine.pretrain import run_pretrain

    cfg, result, seconds = _run_stage(log, PretrainConfig, config, overrides, run_pretrain)
    return {"run_id": result.state.mlflow_run_id, "seconds": seconds, "images_per_s": trained_images(cfg) / seconds}


def finetune(config: str, overrides: list[str], log: str) -> dict:
    from vitssl.config.finetune import FinetuneConfig
    from vitssl.engine.finetune import run_finetune

    cfg, result, seconds = _run_stage(log, FinetuneConfig, config, overrides, run_finetune)
    if cfg.finetune.mode == "finetune":
        images = trained_images(cfg)
    else:  # one pass of the frozen encoder over the training and the evaluation images
        images = sum(split_count(cfg.data.shards, s) for s in [cfg.data.split, *cfg.finetune.splits(cfg.data)])
    return {"run_id": result.run_id, "seconds": seconds, "images_per_s": images / seconds,
            "metrics": result.metrics}


def pixel_baselines(shards: str, splits: list[str], tracking_uri: str, experiment: str, parent_run_id: str | None,
                    seed: int, out: str, class_names: list[str]) -> dict:
    """Logistic regression and an RBF SVM on raw pixels (vitssl.study.pixel_baselines), each an
    MLflow run tagged like a fine-tune run so the comparison table lists them beside the encoders."""

    from vitssl.data import load_split_tensors
    from vitssl.eval.predictions import ARTIFACT as PREDICTIONS
    from vitssl.eval.predictions import to_csv as predictions_csv
    from vitssl.study.pixel_baselines import BASELINES, fit_baseline
    from vitssl.tracking import MlflowRun

    data = {s: tuple(t.numpy() for t in load_split_tensors(shards, s)[:2]) for s in ("train", *splits)}
    results = {}
    for name in BASELINES:
        t0 = time.perf_counter()
        fit = fit_baseline(name, data)
        tracker = MlflowRun(True, tracking_uri, experiment)
        tags = {"vitssl.stage": "baseline", "vitssl.mode": "classifier", "vitssl.objective": name,
                "vitssl.seed": str(seed), "vitssl.classes": ",".join(class_names)}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = tracker.start(f"{name}-s{seed}", tags)
        tracker.log_params({f"baseline.{k}": v for k, v in fit.params.items()} | {"data.shards": shards})
        tracker.log_metrics(fit.metrics | {"train_time_s": time.perf_counter() - t0}, 0)
        tracker.log_text(predictions_csv(fit.predictions), PREDICTIONS)
        tracker.end("FINISHED")
        folder = Path(out) / f"{name}-s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".eval_metrics.json.tmp"
        tmp.write_text(json.dumps({"params": fit.params, **fit.metrics}, indent=2))
        tmp.replace(folder / "eval_metrics.json")
        results[name] = {"run_id": run_id, "params": fit.params, "metrics": fit.metrics}
    return results
