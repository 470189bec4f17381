"""How entry points end: user errors as one `error:` line (exit 2), an interruption as exit 143.

143 = 128 + SIGTERM, what a shell and schedulers (SLURM, Kubernetes) report for a job stopped by
SIGTERM; used for SIGINT too, so "interrupted, resumable" has one code.
"""
from vitssl.config import ConfigError
from vitssl.data import DataError
from vitssl.engine.builders import LaunchError
from vitssl.engine.checkpoint import CheckpointWriteError
from vitssl.engine.lock import RunFolderBusy
from vitssl.tracking.buffered import TrackingUnavailable

USER_ERRORS = (ConfigError, DataError, LaunchError, RunFolderBusy, TrackingUnavailable, CheckpointWriteError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143
