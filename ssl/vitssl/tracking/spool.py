"""What could not reach MLflow, kept in the run folder as JSON lines and replayable later.

Each line is one call on `MlflowRun` (`method`, `kwargs`) and the run it belongs to; `run_id` is
null for a run that was never created because the server was down from the start: the replay
creates it (the first line is then a `start`). Files a call refers to (figures) are copied into
`mlflow-spool/files/` when the call is made, so the replay does not depend on anything else.

    python -m vitssl.tracking.spool <run folder> [--tracking-uri URI]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from vitssl.messages import first_line

SPOOL_DIR = "mlflow-spool"
OPS_FILE = "ops.jsonl"
REJECTED_FILE = "rejected.jsonl"
TERMINAL = "end"  # applied last, so a replayed run ends with its final status


def apply_call(run, method: str, kwargs: dict[str, Any]) -> None:
    """One recorded call on `run` (an `MlflowRun`, its `run_id` set)."""
    getattr(run, method)(**kwargs)


class Spool:
    def __init__(self, run_folder: Path):
        self.folder = Path(run_folder) / SPOOL_DIR
        self.ops_file = self.folder / OPS_FILE
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self.ops_file.is_file() and self.ops_file.stat().st_size > 0

    def keep_file(self, path: Path) -> Path:
        """Copy a file the spooled call needs; returns its new path."""
        dest = self.folder / "files" / uuid.uuid4().hex[:12] / Path(path).name  # MLflow keeps the name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return dest

    def append(self, run_id: str | None, method: str, kwargs: dict[str, Any]) -> None:
        line = json.dumps({"run_id": run_id, "method": method, "kwargs": kwargs})
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.ops_file, "a") as f:
                f.write(line + "\n")
                f.flush()

    def read(self) -> list[dict]:
        if not self:
            return []
        ops = []
        for line in self.ops_file.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except ValueError:  # a line cut short by a kill: the call it held never completed
                continue
        return ops

    def replay(self, run) -> str | None:
        """Apply every spooled call through `run` (an `MlflowRun`), terminal status last, then
        remove the spool. On the first call the server does not take, the calls not yet applied
        are written back and the error is raised. Returns the run id the calls went to (created
        here when the spool starts the run)."""
        ops = self.read()
        ops.sort(key=lambda op: op["method"] == TERMINAL)  # stable: keeps the order otherwise
        created: str | None = None
        last: dict[tuple[str, str], int] = {}  # (run, metric) -> last step the server has
        i = 0
        while i < len(ops):
            op = ops[i]
            try:
                if op["method"] == "start" and op["run_id"] is None:
                    created = run.start(**op["kwargs"])
                    i += 1
                    continue
                run.run_id = op["run_id"] or created
                if run.run_id is None:
                    raise RuntimeError(f"{self.ops_file}: a call for a run that was never started")
                if op["method"] != "log_metrics":
                    apply_call(run, op["method"], op["kwargs"])
                    i += 1
                    continue
                # A run of metric calls for one run goes as one batch. A call cut off by the outage
                # may have reached the server: steps it already has are left out (never logged twice).
                j, steps = i, []
                while j < len(ops) and ops[j]["method"] == "log_metrics" and ops[j]["run_id"] == op["run_id"]:
                    step, metrics = ops[j]["kwargs"]["step"], ops[j]["kwargs"]["metrics"]
                    for key in metrics:
                        if (run.run_id, key) not in last:
                            last[run.run_id, key] = run.last_step((key,))
                    fresh = {k: v for k, v in metrics.items() if step > last[run.run_id, k]}
                    last.update({(run.run_id, k): step for k in fresh})
                    if fresh:
                        steps.append((fresh, step))
                    j += 1
                run.log_metric_steps(steps)
                i = j
            except Exception:
                rest = [dict(o, run_id=o["run_id"] or created) for o in ops[i:]]
                with self._lock:
                    tmp = self.ops_file.with_suffix(".tmp")
                    tmp.write_text("".join(json.dumps(o) + "\n" for o in rest))
                    tmp.replace(self.ops_file)
                raise
        with self._lock:  # files of calls still queued elsewhere stay
            self.ops_file.unlink(missing_ok=True)
            for op in ops:
                if op["method"] == "log_artifact":
                    shutil.rmtree(Path(op["kwargs"]["path"]).parent, ignore_errors=True)
        return run.run_id if ops else None


def main(argv: list[str] | None = None) -> int:
    from vitssl.tracking.mlflow_run import MlflowRun

    parser = argparse.ArgumentParser(description="Replay the MLflow calls a run spooled while the server was down.")
    parser.add_argument("run_folder", type=Path, help="the run's output folder (holds mlflow-spool/)")
    parser.add_argument("--tracking-uri", help="default: run.tracking_uri from the folder's config.yaml, "
                                               "else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment", default=None, help="for a run the spool creates; default from config.yaml")
    args = parser.parse_args(argv)
    spool = Spool(args.run_folder)
    if not spool:
        print(f"nothing to replay: no {spool.ops_file}")
        return 0
    uri, experiment = args.tracking_uri, args.experiment
    config = args.run_folder / "config.yaml"
    if config.is_file():
        import yaml

        run_cfg = (yaml.safe_load(config.read_text()) or {}).get("run", {})
        uri = uri or run_cfg.get("tracking_uri")
        experiment = experiment or run_cfg.get("experiment")
    run = MlflowRun(True, uri, experiment or "vitssl")
    n = len(spool.read())
    try:
        run_id = spool.replay(run)
    except Exception as e:  # noqa: BLE001 - one line for the user, the spool stays for another try
        print(f"error: replay into {run.tracking_uri} stopped: {first_line(e, 300)} "
              f"(the spool is kept: run this again when the server is reachable)", file=sys.stderr)
        return 1
    print(f"replayed {n} call(s) into run {run_id} at {run.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
