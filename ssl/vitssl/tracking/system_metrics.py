"""Optional system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) for a run, sampled by
MLflow's own monitor in a background thread of the main process and logged as `system/*` metrics."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def system_metrics(enabled: bool, run_id: str | None, tracking_uri: str, interval_s: float = 10.0,
                   resumed: bool = False) -> Iterator[None]:
    """Sample while the block runs; a resumed run continues its `system/*` step count."""
    if not enabled or run_id is None:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=resumed,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
