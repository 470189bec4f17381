"""A trainer does not outlive its launcher.

`accelerate launch` with one process runs the trainer as a plain child and does not forward
SIGTERM, and a launcher killed with SIGKILL forwards nothing: the trainer would train on
unattended and race the next launch for the run folder. On Linux the kernel sends the child a
signal when its parent dies (prctl PR_SET_PDEATHSIG); SIGTERM takes the trainer's normal stop path
(checkpoint, MLflow run KILLED, exit 143). Only under a launcher: a trainer started from a shell
(`nohup python launch/pretrain.py ... &`) must survive that shell.

The signal can come more than once. It fires when the *thread* that started the trainer ends: a
launcher with several threads hands the trainer to another of its threads, and the last one to
init; an orphan's reaper (a subreaper, a thread of a multi-threaded init as in containers) ending
fires it again. A second SIGTERM that lands after the training loop, while the trainer writes its
last checkpoint and run status with the default handler back, kills it silently (run left
RUNNING). A stop request therefore cancels the signal (`stop_watching_parent`): the trainer is
stopping already.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
_watching = False  # a parent-death signal is requested
LAUNCHERS = (b"accelerate", b"torchrun", b"torch.distributed.run", b"launch/launcher.py")


def _parent_is_a_launcher(parent: int) -> bool:
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        return False
    return any(name in cmdline for name in LAUNCHERS)


def sigterm_when_parent_dies() -> bool:
    """Ask Linux for SIGTERM when this process's parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    global _watching
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False  # not permitted here (some sandboxes): the parent then has to forward signals itself
    _watching = True
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def stop_watching_parent() -> None:
    """Cancel the parent-death signal (see the module's docstring); safe in a signal handler."""
    global _watching
    if _watching:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
        _watching = False


def die_with_launcher() -> None:
    if sys.platform.startswith("linux") and _parent_is_a_launcher(os.getppid()):
        sigterm_when_parent_dies()
