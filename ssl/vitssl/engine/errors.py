"""How entry points end: user errors as one `error:` line (exit 2), an interruption as exit 143.

143 = 128 + SIGTERM, what a shell and schedulers (SLURM, Kubernetes) report for a job stopped by
SIGTERM; used for SIGINT too, so "interrupted, resumable" has one code.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

from vitssl.config import ConfigError
from vitssl.data import DataError
from vitssl.engine.accelerator import LaunchError
from vitssl.engine.checkpoint import CheckpointWriteError
from vitssl.engine.lock import RunFolderBusy
from vitssl.redaction import redact_text
from vitssl.tracking.buffered import TrackingUnavailable

USER_ERRORS = (ConfigError, DataError, LaunchError, RunFolderBusy, TrackingUnavailable, CheckpointWriteError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143

T = TypeVar("T")


def exit_code_on_error(work: Callable[[], T]) -> T | int:
    """Run an entry point's work. A user error prints one `error:` line and gives EXIT_USER_ERROR;
    Ctrl-C outside the training loop (setup, evaluation: nothing to save) gives EXIT_INTERRUPTED."""
    try:
        return work()
    except USER_ERRORS as e:
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
