"""Where this task stands in its SLURM allocation, as `accelerate launch` needs it.

One launcher runs per node (one SLURM task per node); it starts that node's processes. Everything
comes from SLURM's environment of the task: the node list (`SLURM_JOB_NODELIST`), this node's index
in it (`SLURM_NODEID`), the task count (`SLURM_NTASKS`) and the job id (the rendezvous port, the
same on every node and across a requeue). Outside SLURM (submitit's local executor, a shell) it is
one machine.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

PORT_BASE, PORT_SPAN = 20000, 20000


class SlurmEnvError(ValueError):
    pass


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmEnvError(f"node list {text!r}: ']' without '['")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SlurmEnvError(f"node list {text!r}: '[' without ']'")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_range(item: str) -> list[str]:
    if "-" not in item:
        return [item]
    lo, hi = item.split("-", 1)
    if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
        raise SlurmEnvError(f"node range {item!r} is not <low>-<high>")
    width = len(lo) if lo.startswith("0") else 0  # zero-padded: gpu[01-04]
    return [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list, in order: 'gpu[01-04,07]', 'a1,b2', 'n[1-3]-ib', 'r[1-2]n[01-02]'."""
    hosts: list[str] = []
    for group in _split_top_level(nodelist.strip()):
        match = re.search(r"\[([^\]]*)\]", group)
        if match is None:
            hosts.append(group)
            continue
        head, tail = group[:match.start()], group[match.end():]
        for item in match.group(1).split(","):
            for value in _expand_range(item.strip()):
                hosts.extend(expand_nodelist(head + value + tail))  # a later bracket of the same name
    return hosts


def node_address(node: str) -> str:
    """The address SLURM reaches a node at (its NodeAddr), which may differ from its name; the name
    itself where scontrol is not there or does not know the node."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=30)
        match = re.search(r"\bNodeAddr=(\S+)", out.stdout)
        if out.returncode == 0 and match:
            return match.group(1)
    return node


@dataclass(frozen=True)
class Place:
    num_machines: int
    machine_rank: int
    main_address: str
    main_port: int
    num_processes: int  # in the whole job: num_machines x processes per node

    def accelerate_args(self) -> list[str]:
        return ["--num_machines", str(self.num_machines), "--machine_rank", str(self.machine_rank),
                "--main_process_ip", self.main_address, "--main_process_port", str(self.main_port),
                "--num_processes", str(self.num_processes)]


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        raise SlurmEnvError(f"${key} is {env.get(key)!r}, not a number: is this running inside a SLURM job step?") \
            from None


def place_from_env(env: Mapping[str, str], processes_per_node: int, resolve=node_address) -> Place:
    """This task's place; one task per node. `resolve` maps a node name to an address."""
    if "SLURM_JOB_ID" not in env or "SLURM_JOB_NODELIST" not in env:
        return Place(1, 0, "127.0.0.1", PORT_BASE, processes_per_node)
    nodes = expand_nodelist(env["SLURM_JOB_NODELIST"])
    tasks = _int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else len(nodes)
    if tasks != len(nodes):
        raise SlurmEnvError(f"{tasks} tasks on {len(nodes)} nodes ({env['SLURM_JOB_NODELIST']}): run one task per "
                            "node (--ntasks-per-node=1); each starts its node's processes")
    rank = _int(env, "SLURM_NODEID")
    if not 0 <= rank < len(nodes):
        raise SlurmEnvError(f"$SLURM_NODEID={rank} is outside the job's {len(nodes)} nodes")
    port = PORT_BASE + _int(env, "SLURM_JOB_ID") % PORT_SPAN
    return Place(len(nodes), rank, resolve(nodes[0]), port, len(nodes) * processes_per_node)
