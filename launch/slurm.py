"""Submit a pretraining or fine-tuning run as a SLURM job (submitit), or run it the same way here.

    python launch/slurm.py pretrain --config configs/mnist012/mae.yaml [key.sub=value ...] \
        [--nodes 2 --gpus-per-node 8 --cpus-per-task 64 --mem 400G --time 1440 \
         --partition P --account A --qos Q --max-requeues 3] [--executor slurm|local] [--wait]

Each node runs one task: `accelerate launch` of launch/pretrain.py (or finetune.py) with its
machine rank, the main node's address and port and the process count taken from SLURM's
environment. The job asks for a signal `--signal-before` seconds before its time limit; the
trainers then write a checkpoint and the job requeues itself (at most --max-requeues times),
resuming into the same run folder and MLflow run. The submitit folder (job scripts, each task's log)
is <run.output_dir>/slurm. --executor local runs the job on this machine (one node), to try a
command without a cluster. --wait follows the job to its end and gives its exit code.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"pretrain": "pretrain.py", "finetune": "finetune.py"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", choices=sorted(SCRIPTS), help="what to run")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 run.epochs=2")
    p.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--processes-per-node", type=int, default=None,
                   help="trainer processes on each node (default: --gpus-per-node, or 1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPU cores for each node's processes together")
    p.add_argument("--mem", default=None, help="memory per node, as sbatch takes it (e.g. 200G)")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", type=int, default=60, help="time limit of each job, minutes")
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--max-requeues", type=int, default=3, help="preemptions / time limits to resume from")
    p.add_argument("--signal-before", type=int, default=120, metavar="S",
                   help="seconds before the time limit at which the trainers checkpoint")
    p.add_argument("--job-name", default=None, help="default: vitssl-<run>-<run.name>")
    p.add_argument("--wait", action="store_true", help="follow the job to its end; exit code 0 when it succeeded")
    args = p.parse_intermixed_args(argv)
    for key in ("nodes", "cpus_per_task", "time"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.gpus_per_node < 0 or args.max_requeues < 0 or (args.processes_per_node or 1) < 1:
        p.error("--gpus-per-node and --max-requeues must be >= 0, --processes-per-node >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from vitssl.config import ConfigError, PretrainConfig, load_config
    from vitssl.config.finetune import FinetuneConfig
    from vitssl.slurm.jobs import Resources, executor, wait_for
    from vitssl.slurm.train_job import TrainJob

    schema = PretrainConfig if args.run == "pretrain" else FinetuneConfig
    try:  # a wrong key fails here, in one line, not in a queued job
        cfg = load_config(schema, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.run.resolved_output_dir()).resolve()  # every node, and the requeued job, write here
    procs = args.processes_per_node or max(1, args.gpus_per_node)
    cpu_config = None if args.gpus_per_node else str(
        ROOT / "configs/accelerate" / ("cpu_2proc.yaml" if args.nodes * procs > 1 else "cpu_1proc.yaml"))
    job = TrainJob(str(ROOT / "launch/launcher.py"), str(ROOT / "launch" / SCRIPTS[args.run]),
                   str(Path(args.config).resolve()), [*args.overrides, f"run.output_dir={out}"], procs,
                   args.gpus_per_node, max(1, args.cpus_per_task // procs), args.max_requeues, cpu_config)
    res = Resources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                    mem=args.mem, partition=args.partition, time=args.time, account=args.account, qos=args.qos,
                    max_requeues=args.max_requeues, signal_before_s=args.signal_before)
    try:
        ex = executor(args.executor, out / "slurm", res, args.job_name or f"vitssl-{args.run}-{cfg.run.name}")
        submitted = ex.submit(job)
    except (ValueError, OSError, RuntimeError) as e:  # sbatch refused it: its message says why
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"job {submitted.job_id}: {args.run} into {out}; logs in {out / 'slurm'}", flush=True)
    if not args.wait:
        return 0
    (ended,) = wait_for([submitted])
    if ended.error:
        print(f"job {submitted.job_id} {ended.state}: {ended.error}", file=sys.stderr)
        return 1
    print(f"job {submitted.job_id} {ended.state}: {ended.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
