"""`accelerate launch` for schedulers (SLURM, Kubernetes, a Ctrl-C): the same arguments, plus
SIGTERM/SIGINT handled on the launcher side.

    python launch/launcher.py [--config_file configs/accelerate/cpu_2proc.yaml] launch/pretrain.py \
        --config configs/mnist012/mae.yaml [key.sub=value ...]

A signal to this process reaches every trainer, which checkpoints, marks its MLflow run KILLED and
stops; this process waits for them and exits 143 (the trainers' own code otherwise: 0, 2 for a
user error), printing one line instead of a traceback. With one process it forwards the signal
itself (`accelerate launch` does not); with several, torch's elastic agent forwards it and gives
the trainers 30 s before SIGKILL.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import psutil
from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

EXIT_INTERRUPTED = 143  # as vitssl.engine.errors; this file imports nothing from the project


def forward_to_children(signum, frame) -> None:
    for child in psutil.Process().children():
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str] | None = None) -> int:
    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGINT):  # replaced by torch's own while it runs N processes
        signal.signal(sig, forward_to_children)
    try:
        launch_command(args)
    except SignalException as e:  # N processes: the agent forwarded it and waited for the trainers
        print(f"launcher: stopped by {signal.Signals(e.sigval).name}; the trainers checkpointed: "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except subprocess.CalledProcessError as e:  # one process: its exit code, already explained by it
        return e.returncode if e.returncode > 0 else 128 - e.returncode
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        if EXIT_INTERRUPTED in codes:
            return EXIT_INTERRUPTED
        print(f"launcher: trainer exit codes {codes} (see their output above)", file=sys.stderr)
        return next((c for c in codes if c > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
