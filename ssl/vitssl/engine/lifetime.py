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
import mmap
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

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


# ---------------------------------------------------------------- stop signals
#
# SIGTERM and SIGINT stop a trainer cleanly at any moment:
# - outside the training loop (start-up, evaluation, logging the encoder) they raise Interrupted where
#   the process is: the run session unwinds (MLflow run KILLED, lock released) and the entry point
#   exits 143;
# - inside the loop (StopRequest) they set a flag the loop checks at its agreement points, then it
#   saves a checkpoint and ends;
# - while the loop waits for data (StopRequest.interruptible), a request still unanswered after
#   READ_GRACE_S raises ReadInterrupted there, so a read blocked on a stalled source ends in seconds.
# A forked DataLoader worker keeps reading on a signal (a scheduler signals the whole process group;
# the trainer still needs batches up to its next agreement point) until the trainer gives up on a
# blocked read: then the trainer signals its workers, they raise Interrupted, their readers end the
# transfers and they exit. (torch replaces a worker's SIGTERM handler with one that dies at once;
# ``vitssl.data.worker_signals`` puts this one back.) Further signals after the first only set the flag: the save and the
# run status are not cut short. Another signal with its own meaning (e.g. checkpoint-and-go-on) can
# be added next to STOP_SIGNALS with a handler of its own.

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
READ_GRACE_S = 2.0


class Interrupted(KeyboardInterrupt):
    """A stop signal outside the training loop: nothing to save, unwind and exit 143."""


class ReadInterrupted(Interrupted):
    """A stop signal while the training loop waited for data."""


_owner_pid: int | None = None
_stop_count = 0


def _interrupt_here(signum, frame) -> None:
    global _stop_count
    _stop_count += 1
    stop_watching_parent()
    if os.getpid() != _owner_pid or _stop_count == 1:
        raise Interrupted(signal.Signals(signum).name)


def interrupt_on_stop_signals() -> None:
    """From process start: SIGTERM/SIGINT raise Interrupted (see above). Main thread only."""
    global _owner_pid
    _owner_pid = os.getpid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt_here)


class StopRequest:
    """Within the training loop: SIGTERM/SIGINT -> a flag the loop checks (see above)."""

    def __init__(self, grace_s: float = READ_GRACE_S):
        self.requested = False
        self.signal: int | None = None
        self.read_interrupted = False
        self.grace_s = grace_s
        self._waiting = False
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()
        self._gave_up = mmap.mmap(-1, 1)  # shared with the DataLoader workers forked later: 1 = stop reading

    def __enter__(self) -> StopRequest:
        for sig in (*STOP_SIGNALS, signal.SIGALRM):
            handler = self._alarm if sig == signal.SIGALRM else self._handle
            self._previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        global _stop_count
        if os.getpid() != self._pid:  # a forked DataLoader worker
            if self._gave_up[0]:
                raise Interrupted(signal.Signals(signum).name)
            return
        _stop_count += 1  # after the loop, further signals must not cut the save or the run status
        self.requested, self.signal = True, self.signal or signum
        stop_watching_parent()  # stopping already: a dying launcher's repeated SIGTERM must not cut the save
        if self._waiting:
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

    def _alarm(self, signum, frame) -> None:
        if self._waiting and os.getpid() == self._pid:
            raise ReadInterrupted("stop requested while waiting for data")

    def interruptible(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, where waiting for the next one ends READ_GRACE_S after a stop request; it then
        sets ``read_interrupted`` and ends the iteration. Left before its end (a stop, an error), the
        DataLoader workers may stop too: the shutdown's SIGTERM then ends a worker blocked in a read."""
        it = None
        try:
            while True:
                self._waiting = True
                if self.requested:
                    signal.setitimer(signal.ITIMER_REAL, self.grace_s)
                try:
                    if it is None:
                        it = iter(batches)  # forks DataLoader workers, may already wait for data
                    item = next(it)
                except StopIteration:
                    it = None
                    return
                except ReadInterrupted:
                    self.read_interrupted = True
                    self._gave_up[0] = 1
                    for worker in multiprocessing.active_children():  # blocked in reads of their own
                        os.kill(worker.pid, signal.SIGTERM)
                    return
                finally:
                    self._waiting = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
                yield item
        finally:
            if it is not None:
                self._gave_up[0] = 1
