"""What each task of a training job runs: this node's `accelerate launch` of pretrain or finetune.

One task per node. It starts launch/launcher.py (accelerate launch, signals handled) with this
node's place in the allocation (vitssl.slurm.place) and waits for it.

Preemption and time limits: the job asks SLURM for SIGUSR2 `signal_before_s` seconds before its end
(submitit's --signal). SLURM sends it to every process of the job step; the trainers ignore it (the
launcher is started with SIGUSR2 ignored, which its children inherit) and submitit calls
`checkpoint()` in task 0. That sends SIGTERM to the node's launcher: the trainers agree to stop,
write a checkpoint (all ranks together) and exit. submitit then requeues the job; the requeued job
runs `run.resume=auto` into the same run folder and MLflow run. At most `max_requeues` requeues; a
trainer that fails for any other reason fails the job, which is not requeued.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from submitit.helpers import DelayedSubmission

from vitssl.slurm.place import place_from_env

EXIT_INTERRUPTED = 143
PREEMPTION_SIGNAL = signal.SIGUSR2  # submitit's --signal
KILL_WAIT_S = 300  # another node's task, stopped with the job: how long it waits for the requeue's kill


def _ignore_preemption_signal() -> None:  # in the launcher, before exec: inherited by the trainers
    signal.signal(PREEMPTION_SIGNAL, signal.SIG_IGN)


class TrainJob:
    def __init__(self, launcher: str, script: str, config: str, overrides: list[str], processes_per_node: int,
                 gpus_per_node: int, threads_per_process: int, max_requeues: int, accelerate_config: str | None,
                 requeues: int = 0):
        self.launcher, self.script, self.config = launcher, script, config
        self.overrides = list(overrides)
        self.processes_per_node = processes_per_node
        self.gpus_per_node = gpus_per_node
        self.threads_per_process = threads_per_process
        self.max_requeues = max_requeues
        self.accelerate_config = accelerate_config  # for CPU processes (gloo); None with GPUs
        self.requeues = requeues
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)

    def command(self, env: dict[str, str]) -> list[str]:
        place = place_from_env(env, self.processes_per_node)
        launch = ["--config_file", self.accelerate_config] if self.accelerate_config else []
        if place.num_processes > 1 and not self.accelerate_config:
            launch.append("--multi_gpu")
        return [sys.executable, self.launcher, *launch, *place.accelerate_args(),
                "--num_cpu_threads_per_process", str(self.threads_per_process),
                self.script, "--config", self.config, *self.overrides, "run.resume=auto"]

    def __call__(self) -> dict:
        env = dict(os.environ)
        cmd = self.command(env)
        print(f"[vitssl] node {env.get('SLURM_NODEID', '0')}, requeue {self.requeues}: {' '.join(cmd)}", flush=True)
        self._proc = subprocess.Popen(cmd, preexec_fn=_ignore_preemption_signal)
        code = self._proc.wait()
        if code == 0:
            return {"exit_code": 0, "requeues": self.requeues}
        if code == EXIT_INTERRUPTED and env.get("SLURM_NODEID", "0") != "0":
            # Stopped with the job (task 0 was asked to checkpoint, and the trainers agreed): task 0
            # requeues the job, which ends this task too; leave that to it.
            time.sleep(KILL_WAIT_S)
        raise RuntimeError(f"the trainer exited with {code}" + (
            " (stopped by a signal: a checkpoint is written; submit again to resume)" if code == EXIT_INTERRUPTED
            else "; not requeued (only a preemption or time limit is)"))

    def checkpoint(self) -> DelayedSubmission | None:
        """Called by submitit in task 0 on the pre-timeout / preemption signal: stop the trainers
        (they write a checkpoint), then requeue the same job with one requeue fewer left."""
        if self._proc is not None and self._proc.poll() is None:
            print("[vitssl] preemption or time limit: stopping the trainers for a checkpoint", flush=True)
            self._proc.send_signal(signal.SIGTERM)
            # Not Popen.wait(): this runs in a signal handler that interrupted the Popen.wait() of
            # __call__, which holds its lock. WNOWAIT leaves the exit status to that wait.
            os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
        if self.requeues >= self.max_requeues:
            print(f"[vitssl] not requeued: --max-requeues {self.max_requeues} reached", flush=True)
            return None
        again = TrainJob(**(self.__getstate__() | {"requeues": self.requeues + 1}))
        return DelayedSubmission(again)
