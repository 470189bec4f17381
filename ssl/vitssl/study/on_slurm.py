"""Run the study's job graph as SLURM jobs: one job per stage, a stage after its pretraining.

Each stage is submitted (submitit) as a one-task job running the same stage function a local worker
runs (vitssl.study.stages). A job that comes after others depends on them with `afterok` and
`--kill-on-invalid-dep=yes`: when one of them fails or is cancelled, SLURM cancels it instead of
leaving it pending forever, and the study reports it skipped. Jobs are submitted parents first, so
every dependency has a job id; the study then follows all of them to their end.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from vitssl.slurm.jobs import Ended, Resources, executor, wait_for
from vitssl.study.scheduler import Job, Outcome


def _in_dependency_order(jobs: list[Job]) -> list[Job]:
    by_name = {j.name: j for j in jobs}
    missing = sorted({d for j in jobs for d in j.after} - set(by_name))
    if missing:
        raise ValueError(f"jobs depend on unknown jobs {missing}")
    ordered: list[Job] = []
    placed: set[str] = set()

    def place(job: Job, path: tuple[str, ...] = ()) -> None:
        if job.name in placed:
            return
        if job.name in path:
            raise ValueError(f"jobs depend on each other in a cycle: {' -> '.join(path + (job.name,))}")
        for dep in job.after:
            place(by_name[dep], path + (job.name,))
        placed.add(job.name)
        ordered.append(job)

    for job in sorted(jobs, key=lambda j: -j.cost):  # the longest first: the scheduler's order at equal priority
        place(job)
    return ordered


def job_name(stage: str) -> str:
    return "vitssl-" + "-".join(stage.split())


def run_jobs_on_slurm(jobs: list[Job], res: Resources, folder: Path, kind: str = "slurm",
                      report: Callable[[Outcome], None] | None = None) -> tuple[dict[str, Outcome], float]:
    """Submit every job, follow them to their end; returns (name -> Outcome, mean submission seconds)."""
    submitted = {}
    names = {}
    t0 = time.perf_counter()
    for job in _in_dependency_order(jobs):
        deps = [submitted[d].job_id for d in job.after]
        ex = executor(kind, folder, res, job_name(job.name), dependency="afterok:" + ":".join(deps) if deps else None)
        sub = ex.submit(job.fn, **job.kwargs)
        submitted[job.name] = sub
        names[sub.job_id] = job.name
        print(f"[{job.name}] job {sub.job_id}" + (f" after {', '.join(deps)}" if deps else ""), flush=True)
    per_job = (time.perf_counter() - t0) / max(1, len(jobs))
    outcomes: dict[str, Outcome] = {}
    by_name = {j.name: j for j in jobs}

    def ended(e: Ended) -> None:
        name = names[e.job.job_id]
        failed_deps = [d for d in by_name[name].after if outcomes.get(d) and outcomes[d].status != "done"]
        if not e.error:
            value = e.value
            seconds = value.get("seconds", 0.0) if isinstance(value, dict) else 0.0
            outcome = Outcome(name, "done", seconds, value)
        elif failed_deps or (e.state == "CANCELLED" and any(d not in outcomes for d in by_name[name].after)):
            outcome = Outcome(name, "skipped", error=f"a job it needs did not succeed ({e.state})")
        else:
            outcome = Outcome(name, "failed", error=f"{e.state}: {e.error}")
        outcomes[name] = outcome
        if report:
            report(outcome)

    wait_for(list(submitted.values()), ended)
    return outcomes, per_job
