"""Run a graph of jobs on a fixed pool of long-lived worker processes.

Each worker is a spawned process that imports torch, accelerate and MLflow once and then runs job
after job in-process: a study of ~15 stages pays the ~17 s start-up of a Python training process
(imports, opening the tracking store) once per worker instead of once per stage. A worker owns one
slot: a share of the CPU threads, or one GPU (CUDA_VISIBLE_DEVICES set before CUDA starts).

Jobs run when every job they come `after` has succeeded; a failed job's dependents are skipped.
Among ready jobs the one with the longest remaining path (its cost plus its heaviest chain of
dependents) starts first, so long pretrainings do not end up alone at the tail.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from vitssl.engine.lifetime import sigterm_when_parent_dies

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_study_pid: int | None = None  # in a worker: the study process that started it


@dataclass
class Job:
    name: str
    fn: Callable[..., Any]  # a module-level function (it is pickled to the worker)
    kwargs: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()
    cost: float = 1.0  # a rough duration, used only to order ready jobs


@dataclass
class Outcome:
    name: str
    status: str  # done | failed | skipped
    seconds: float = 0.0
    value: Any = None
    error: str = ""


@dataclass(frozen=True)
class Slots:
    """What each worker gets: `threads` CPU threads and, when `gpus` (the GPU count) is set, GPU
    slot % gpus: workers beyond the GPU count share GPUs round-robin."""

    workers: int
    threads: int
    gpus: int = 0


def plan_slots(jobs: int | None = None, threads: int = 1) -> Slots:
    """One worker per GPU; without GPUs one worker per core, `threads` each (default 1: these models
    are tiny, two threads on one small matmul gain little, and on a shared machine two OpenMP threads
    per worker: MAE pretraining at 4.8 s a step, 0.12 s with one thread, measured on this machine)."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus:  # --jobs above the GPU count shares each GPU among workers (small models leave it idle)
        workers = max(1, jobs or gpus)
        return Slots(workers, max(1, (os.cpu_count() or 1) // workers), gpus=gpus)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Slots(max(1, jobs or cores), threads)


def _init_worker(slot_ids, threads: int, gpus: int) -> None:
    # A spawned worker has imported the parent's main module, and with it maybe torch, before this
    # runs: set the thread count on torch itself too. More OpenMP threads than the slot's share
    # spin against each other on a busy machine (measured here: InfoNCE at 18 s a step, 0.46 s with 1 thread).
    global _study_pid
    slot = slot_ids.get()
    _study_pid = os.getppid()
    # SIGTERM when the study dies (killed, or a crash), so no worker trains on unattended; the
    # trainer turns SIGTERM into a checkpoint and a clean exit.
    sigterm_when_parent_dies()
    # A spawned process takes 'spawn' as its default start method, so each epoch's DataLoader workers
    # would re-import torch: ~10 s an epoch, measured on an H100 machine. Back to the platform's default.
    multiprocessing.set_start_method(None, force=True)
    if gpus:  # before the first CUDA call, which is what counts
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _timed(fn: Callable[..., Any], kwargs: dict) -> tuple[float, Any]:
    t0 = time.perf_counter()
    try:
        value = fn(**kwargs)
    finally:
        if _study_pid is not None and os.getppid() != _study_pid:
            # The study died and its SIGTERM stopped this job cleanly (checkpoint written): nobody takes
            # the result, and the pool's queue would keep this worker, and its stdout, alive forever.
            os._exit(143)
    return time.perf_counter() - t0, value


def _priorities(jobs: dict[str, Job]) -> dict[str, float]:
    children: dict[str, list[str]] = {name: [] for name in jobs}
    for job in jobs.values():
        for dep in job.after:
            children[dep].append(job.name)
    memo: dict[str, float] = {}

    def path(name: str) -> float:
        if name not in memo:
            memo[name] = jobs[name].cost + max((path(c) for c in children[name]), default=0.0)
        return memo[name]

    return {name: path(name) for name in jobs}


def run_jobs(jobs: list[Job], slots: Slots, report: Callable[[Outcome], None] | None = None) -> dict[str, Outcome]:
    """Run every job; returns name -> Outcome. `report` is called in this process as each job ends."""
    by_name = {j.name: j for j in jobs}
    if len(by_name) != len(jobs):
        raise ValueError("job names must be unique")
    missing = sorted({d for j in jobs for d in j.after} - set(by_name))
    if missing:
        raise ValueError(f"jobs depend on unknown jobs {missing}")
    priority = _priorities(by_name)
    outcomes: dict[str, Outcome] = {}
    pending = sorted(by_name, key=lambda n: -priority[n])
    running: dict[Future, str] = {}
    ctx = multiprocessing.get_context("spawn")  # no forked copy of the parent's threads or CUDA state
    slot_ids = ctx.Queue()
    for i in range(slots.workers):
        slot_ids.put(i)

    def finish(outcome: Outcome) -> None:
        outcomes[outcome.name] = outcome
        if report:
            report(outcome)

    # Spawned workers inherit this environment: torch reads its thread count when it is imported.
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: str(slots.threads) for k in THREAD_VARS})
    try:
        with ProcessPoolExecutor(slots.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(slot_ids, slots.threads, slots.gpus)) as pool:
            _drive(pool, pending, running, by_name, outcomes, slots.workers, finish)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return outcomes


def _drive(pool, pending: list[str], running: dict, by_name: dict[str, Job], outcomes: dict[str, Outcome],
           workers: int, finish: Callable[[Outcome], None]) -> None:
    """Submit ready jobs while a worker is free; collect each as it ends."""
    while pending or running:
        for name in list(pending):
            job = by_name[name]
            if any(outcomes.get(d, Outcome(d, "")).status in ("failed", "skipped") for d in job.after):
                pending.remove(name)
                finish(Outcome(name, "skipped", error="a job it needs failed"))
            elif len(running) < workers and all(d in outcomes for d in job.after):
                pending.remove(name)
                running[pool.submit(_timed, job.fn, job.kwargs)] = name
        if not running:
            continue
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            name = running.pop(future)
            try:
                seconds, value = future.result()
                finish(Outcome(name, "done", seconds, value))
            except Exception as e:  # the job's own error, or its worker died
                finish(Outcome(name, "failed", error=f"{type(e).__name__}: {e}"))
