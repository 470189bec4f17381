"""Optional system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) for a run, sampled by
MLflow's own monitor in a background thread of the main process and logged as `system/*` metrics."""
from __future__ import annotations


class SystemMetrics:
    """Switched on by `run.system_metrics`; start once the run exists, stop when it ends."""

    def __init__(self, enabled: bool, tracking_uri: str, interval_s: float = 10.0):
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.interval_s = interval_s
        self._monitor = None

    def start(self, run_id: str | None, resumed: bool = False) -> None:
        """A resumed run continues its `system/*` step count."""
        if not self.enabled or run_id is None or self._monitor is not None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(run_id, sampling_interval=self.interval_s, resume_logging=resumed,
                                             tracking_uri=self.tracking_uri)
        self._monitor.start()

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
