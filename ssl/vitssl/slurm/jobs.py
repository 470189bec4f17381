"""Submitting jobs with submitit and following them to their end.

`executor()` makes a submitit executor for SLURM (`sbatch`) or for this machine (`local`, to try a
command without a cluster) from one `Resources`. `wait_for()` follows jobs to their end with
`squeue` (the controller's own view, which needs no accounting database, unlike `sacct`, which
submitit's watcher calls) and reads their results with submitit.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

# Job states after which a job runs no more (squeue --states=all); REQUEUED and PENDING are not.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
EXECUTORS = ("slurm", "local")


@dataclass
class Resources:
    """What one job asks for. `time` in minutes; `mem` as sbatch writes it (e.g. 32G)."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    partition: str | None = None
    time: int = 60
    account: str | None = None
    qos: str | None = None
    max_requeues: int = 3
    signal_before_s: int = 120  # the pre-timeout signal: time left to write a checkpoint
    extra: dict[str, Any] = field(default_factory=dict)  # more sbatch options, e.g. {"constraint": "a100"}


def executor(kind: str, folder: str | Path, res: Resources, name: str = "vitssl",
             dependency: str | None = None) -> submitit.Executor:
    """A submitit executor writing its files (scripts, pickles, logs) into `folder`."""
    if kind not in EXECUTORS:
        raise ValueError(f"--executor {kind!r}: choose from {list(EXECUTORS)}")
    if kind == "local":
        if res.nodes != 1:
            raise ValueError(f"--nodes {res.nodes}: the local executor runs on this machine only (--nodes 1)")
        ex = submitit.LocalExecutor(folder, max_num_timeout=res.max_requeues)
        ex.update_parameters(timeout_min=res.time, gpus_per_node=res.gpus_per_node, tasks_per_node=1,
                             signal_delay_s=res.signal_before_s)
        return ex
    ex = submitit.SlurmExecutor(folder, max_num_timeout=res.max_requeues)
    extra = {"requeue": True} | res.extra
    if dependency:  # a job whose dependency failed is cancelled, not left pending forever
        extra["kill-on-invalid-dep"] = "yes"
    params: dict[str, Any] = dict(job_name=name, nodes=res.nodes, ntasks_per_node=1, cpus_per_task=res.cpus_per_task,
                                  time=res.time, signal_delay_s=res.signal_before_s, stderr_to_stdout=True,
                                  additional_parameters=extra)
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("mem", "partition", "account", "qos"):
        if getattr(res, key):
            params[key] = getattr(res, key)
    if dependency:
        params["dependency"] = dependency
    ex.update_parameters(**params)
    return ex


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """job id -> state as the controller knows it; a job it has forgotten is absent. None when the
    controller did not answer (a busy or restarting slurmctld): ask again later."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state
    return states


@dataclass
class Ended:
    job: submitit.Job
    state: str  # COMPLETED, FAILED, CANCELLED, ... (local jobs: FINISHED or FAILED as submitit says)
    value: Any = None  # what task 0 returned
    error: str = ""


def _last_error_line(text: str) -> str:
    """'RuntimeError: ...' from submitit's failure text (a traceback between dashed lines, then log paths)."""
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) > 2 else text
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text.strip()


def result_of(job: submitit.Job, state: str) -> Ended:
    """The job's outcome; its result or error as submitit stored it, when it stored one."""
    task = job.task(0)
    if task.paths.result_pickle.exists():
        try:
            return Ended(job, state, task.result())
        except Exception as e:  # the job's own error, raised again here with its traceback
            return Ended(job, "FAILED" if state == "COMPLETED" else state, error=_last_error_line(str(e)))
    return Ended(job, state, error=f"job {job.job_id} ended {state} without a result (see {task.paths.stdout})")


def wait_for(jobs: list[submitit.Job], on_end: Callable[[Ended], None] | None = None,
             poll_s: float = 2.0) -> list[Ended]:
    """Follow `jobs` until each has ended; `on_end` is called as each ends, in the order they end."""
    pending = {job.job_id: job for job in jobs}
    ended: list[Ended] = []
    forgotten: dict[str, int] = {}
    while pending:
        slurm = [j for j in pending.values() if isinstance(j, submitit.SlurmJob)]
        states = slurm_states(j.job_id for j in slurm)
        for job_id, job in list(pending.items()):
            if isinstance(job, submitit.SlurmJob):
                if states is None:
                    continue
                state = states.get(job_id, "")
                if not state:  # submitted but not yet listed, or ended and already forgotten
                    forgotten[job_id] = forgotten.get(job_id, 0) + 1
                    if forgotten[job_id] < 5:
                        continue
                    state = "COMPLETED" if job.task(0).paths.result_pickle.exists() else "UNKNOWN"
                elif state not in ENDED:
                    continue
            else:
                if not job.done():
                    continue
                state = "COMPLETED"
            outcome = result_of(pending.pop(job_id), state.split()[0])
            ended.append(outcome)
            if on_end:
                on_end(outcome)
        if pending:
            time.sleep(poll_s)
    return ended
