"""A real one-host SLURM cluster for tests: munged, slurmctld and slurmd from Debian's slurm-wlm and
munge, started as root with a generated slurm.conf in a temporary folder.

Every daemon gets its own socket, ports, pid, log and state files under that folder, so nothing of
the machine's own configuration is read or changed. Tests talk to it through SLURM_CONF (sbatch,
squeue, scontrol and submitit read it). Skips with the reason where the binaries are missing or the
tests do not run as root.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sacct")


def missing_reason() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    missing = [b for b in DAEMONS + CLIENTS[:4] if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM binaries missing ({', '.join(missing)}): apt-get install slurm-wlm munge (.ci/run does)"
    if os.geteuid() != 0:
        return "the one-host SLURM cluster starts its daemons as root"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=vitssl-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=30
MinJobAge=600
MessageTimeout=20
SlurmctldDebug=info
SlurmdDebug=info
JobRequeue=1
PrologFlags=NoHold
{nodes}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


NODE_LINE = ("NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} RealMemory={memory} "
             "State=UNKNOWN\n")


@dataclass
class SlurmCluster:
    """`nodes` slurmd daemons on this host, `cpus_per_node` CPUs each (the nodes' Port and %n-named
    pid and spool files let several run side by side)."""

    root: Path
    nodes: int = 2
    cpus_per_node: int = 1
    memory_mb: int = 2000
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def node_names(self) -> list[str]:
        return [f"node{i + 1}" for i in range(self.nodes)]

    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, check=check, timeout=60)

    def start(self) -> SlurmCluster:
        root = self.root
        for d in ["state", "munge", *(f"spool-{n}" for n in self.node_names)]:
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        os.chmod(root / "munge", 0o700)
        munge_socket = root / "munge" / "munge.socket"
        self._spawn([_binary("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                     f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                     f"--seed-file={root}/munge/munged.seed"], "munged")
        self._wait(lambda: munge_socket.exists(), "munged did not create its socket", root / "munge/munged.log")
        host = socket.gethostname()
        nodes = "".join(NODE_LINE.format(name=n, host=host, port=_free_port(), cpus=self.cpus_per_node,
                                         memory=self.memory_mb) for n in self.node_names)
        self.conf.write_text(SLURM_CONF.format(
            host=host, munge_socket=munge_socket, ctld_port=_free_port(), slurmd_port=_free_port(), root=root,
            nodes=nodes))
        self._spawn([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait(lambda: "UP" in self.run("scontrol", "ping", check=False).stdout,
                   "slurmctld did not answer scontrol ping", root / "slurmctld.log")
        for name in self.node_names:
            self._spawn([_binary("slurmd"), "-D", "-N", name, "-f", str(self.conf)], f"slurmd-{name}")
        self._wait(self._node_idle, "the nodes did not come up idle", root / "slurmd-node1.log")
        return self

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
        return len(out) == self.nodes and all(s.rstrip("*") == "idle" for s in out)

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait(self, ready, what: str, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                text = log.read_text()[-2000:] if log.exists() else ""
                outs = "".join(p.read_text()[-1000:] for p in self.root.glob("*.out"))
                self.stop()
                raise RuntimeError(f"{what}:\n{text}\n{outs}")
            time.sleep(0.2)

    def wait_idle(self, timeout: float = 120) -> None:
        """Until no job is pending or running (the previous test's jobs are gone)."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError("jobs left in the queue:\n" + self.run("squeue", check=False).stdout)
            time.sleep(0.5)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started two-node cluster; SLURM_CONF points at it for this session (submitit calls sbatch)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.run("scancel", "--user=root", check=False)  # a failed test's jobs
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


if __name__ == "__main__":  # a cluster to try commands by hand: python tests/slurm_cluster.py <folder>; Ctrl-C stops it
    import signal
    import sys

    reason = missing_reason()
    if reason:
        sys.exit(reason)
    cluster = SlurmCluster(Path(sys.argv[1]).resolve()).start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        cluster.stop()
