"""One owner per run folder: `<run folder>/.lock` names the trainer that writes there.

The file is created with O_EXCL (atomic, also on NFS) and holds pid, host, the process's start
time and a random token. A second trainer refuses with one line naming the owner. A lock whose
owner is gone is taken over: on the same host, when no process has that pid, or the pid now
belongs to a process started at another time (pid reuse). A lock from another host cannot be
checked from here: the error says so and how to clear it.

With several nodes, node 0 takes the lock and every node then reads the token back from its own
view of the folder: a folder that is not shared between the nodes is refused at start.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderBusy(Exception):
    """Another trainer owns the run folder, or the nodes do not share it."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(owner: dict) -> bool:
    pid = int(owner.get("pid", -1))
    if Path("/proc").is_dir():
        started = _start_time(pid)
        return started is not None and started == owner.get("proc_start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolderLock:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.token: str | None = None
        self.created = False
        self.taken_over: dict | None = None  # the lock of a dead owner this one replaced

    def describe(self, owner: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        return f"pid {owner.get('pid')} on host {owner.get('host')} since {since}"

    def acquire(self) -> str:
        """Take the lock (creating the folder if needed); returns its token."""
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "proc_start": _start_time(os.getpid()), "token": uuid.uuid4().hex}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.read()
                if owner is None:  # being written this instant, or cut short by a kill
                    time.sleep(0.2)
                    owner = self.read() or {"host": me["host"], "pid": -1}
                if owner.get("host") != me["host"]:
                    raise RunFolderBusy(
                        f"{self.folder} is in use by {self.describe(owner)} (another host: cannot tell whether it "
                        f"still runs): stop it, or delete {self.path} if it is gone") from None
                if _alive(owner):
                    raise RunFolderBusy(
                        f"{self.folder} is in use by {self.describe(owner)}: stop that trainer first, or set "
                        "another run.output_dir") from None
                self.path.unlink(missing_ok=True)  # its owner is gone: a stale lock
                self.taken_over = owner
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.token = me["token"]
            return self.token
        raise RunFolderBusy(f"{self.folder}: could not take {self.path} (other trainers keep taking it)")

    def record(self, **fields) -> None:
        """Add ``fields`` (e.g. the MLflow run id) to our lock, atomically: a later owner that finds this
        lock stale learns what the dead trainer left unfinished."""
        mine = self.read()
        if self.token is None or (mine or {}).get("token") != self.token:
            return
        tmp = self.path.with_name(f"{LOCK_FILE}.{self.token}")
        tmp.write_text(json.dumps(mine | fields))
        os.replace(tmp, self.path)

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.token is not None and (self.read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
            if self.created and not any(self.folder.iterdir()):
                self.folder.rmdir()  # a refused start leaves nothing behind
        self.token = None


def lock_run_folder(accelerator, folder: Path) -> RunFolderLock | None:
    """Collective. Node 0's main process takes the lock; every node checks that it sees that same
    lock (a shared folder). Raises RunFolderBusy on every process if either fails."""
    from accelerate.utils import broadcast_object_list, gather_object

    lock = RunFolderLock(folder) if accelerator.is_main_process else None
    outcome = [None, None]  # [token, error]
    if lock is not None:
        try:
            outcome[0] = lock.acquire()
        except (RunFolderBusy, OSError) as err:
            outcome[1] = str(err) if isinstance(err, RunFolderBusy) else f"{folder}: cannot write there ({err})"
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    token, error = outcome
    if error is None and accelerator.num_processes > 1:
        sees = (RunFolderLock(folder).read() or {}).get("token") == token if accelerator.is_local_main_process else True
        blind = [rank for rank, ok in gather_object([(accelerator.process_index, sees)]) if not ok]
        if blind:
            error = (f"run.output_dir {folder} is not shared between the nodes (process {blind[0]} does not see "
                     "node 0's files there): put it on a filesystem every node mounts at the same path")
    if error is not None:
        if lock is not None:
            lock.release()
        raise RunFolderBusy(error)
    return lock
