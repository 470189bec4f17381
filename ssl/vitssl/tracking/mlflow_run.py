"""MLflow logging for one training run, from the main process only.

We call the MLflow client directly instead of accelerate's tracker: that tracker str()-s nested
values, drops long params with only a warning and drops non-float metrics.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARAM_MAX_CHARS = 6000  # MLflow's limit for one param value
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
# MLflow 3's UI opens an experiment by this tag: model training (runs, metrics, models), not its GenAI
# view (traces, token usage) that it guesses for an untagged one
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def resolve_tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MlflowRun:
    """A thin, explicit wrapper: start or resume a run, log flat params, scalar metrics, files."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str):
        self.enabled = enabled
        self.run_id: str | None = None
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        if enabled:
            import mlflow

            self._mlflow = mlflow
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def start(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> str | None:
        """Create a run, or reopen `run_id` (resume) and mark it RUNNING again."""
        if not self.enabled:
            return None
        if run_id is not None:
            self._client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is None:
                exp_id = self._client.create_experiment(self.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                exp_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:
                    self._client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            run = self._client.create_run(exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_MAX_CHARS]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_metric_steps([(metrics, step)])

    def log_metric_steps(self, steps: list[tuple[dict[str, float], int]]) -> None:
        """Metrics of many steps in as few requests as MLflow allows: a backlog drains quickly."""
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for values, step in steps for k, v in values.items()]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])

    def check_reachable(self) -> None:
        """One cheap request to the tracking server; raises when it cannot be reached."""
        self._client.search_experiments(max_results=1)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self._client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """Save a matplotlib figure as PNG into the run's artifacts."""
        if self.enabled:
            log_figure_as_png(self.log_artifact, figure, artifact_file)

    def last_step(self, keys: tuple[str, ...]) -> int:
        """The highest step logged for any of `keys` (-1 if none): a resumed run logs only later steps."""
        if not self.enabled or not self.run_id:
            return -1
        steps = [m.step for k in keys for m in self._client.get_metric_history(self.run_id, k)]
        return max(steps, default=-1)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self._client.set_terminated(self.run_id, status=status)


def log_figure_as_png(log_artifact, figure, artifact_file: str) -> None:
    """Render `figure` to a PNG named like `artifact_file` and hand it to `log_artifact(path, folder)`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        figure.savefig(path, dpi=100, bbox_inches="tight")
        parent = str(Path(artifact_file).parent)
        log_artifact(path, None if parent == "." else parent)
