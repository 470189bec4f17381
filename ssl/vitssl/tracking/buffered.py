"""MLflow logging that a tracking outage cannot stop: a bounded start, then a background sender.

Start: the server gets `start_timeout` seconds (bounded client retries). Unreachable after that,
the run stops with one error line, or, with `run.tracking_required=false`, trains on without a
server and spools everything for a later replay.
During the run: each call is queued and sent by one background thread, so training never waits
on HTTP. When a call fails, it and every call after it go to the spool in the run folder
(`mlflow-spool/`, see `spool.py`), the thread probes the server every `probe_every` seconds and,
once it answers, replays the spool in order and carries on. `close()` waits at most
`close_timeout` seconds without progress; whatever is still unsent stays in the spool, and the next start in the
same folder (a resume) or `python -m vitssl.tracking.spool <run folder>` replays it.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from vitssl.messages import first_line
from vitssl.redaction import redact_urls
from vitssl.tracking.mlflow_run import MlflowRun, log_figure_as_png, resolve_tracking_uri
from vitssl.tracking.spool import REJECTED_FILE, Spool, apply_call

# MLflow's client otherwise retries an unreachable server for minutes (7 retries, 120 s timeout).
BOUNDED_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


MAX_QUEUED_METRIC_CALLS = 200  # metric calls drained into one batch at most


class TrackingUnavailable(Exception):
    """The tracking server could not be reached at start and tracking is required."""


def _groups(items: list[tuple]) -> list[list[tuple]]:
    """Consecutive metric calls of one run together; every other call alone."""
    groups: list[list[tuple]] = []
    for item in items:
        last = groups[-1][-1] if groups else None
        if last and item[1] == last[1] == "log_metrics" and item[0] == last[0]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


class BufferedRun:
    """`MlflowRun`'s interface; calls return at once and reach MLflow from a background thread."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str, run_folder: Path,
                 required: bool = True, start_timeout: float = 20.0, probe_every: float = 5.0,
                 close_timeout: float = 10.0):
        for key, value in BOUNDED_CLIENT.items():
            os.environ.setdefault(key, value)  # an explicit user setting wins
        self._inner_args = (enabled, tracking_uri, experiment)
        self.inner: MlflowRun | None = None  # made at start: a SQLite store is created when its client is
        self.enabled = enabled
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.spool = Spool(run_folder)
        self.required, self.start_timeout = required, start_timeout
        self.probe_every, self.close_timeout = probe_every, close_timeout
        self.run_id: str | None = None
        self.offline = False  # True while calls go to the spool instead of the server
        self._queue: queue.Queue = queue.Queue()
        self._switch = threading.Lock()  # serialises spool replay and the final drain
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- start (synchronous, bounded) ----------------------------------------------------------
    def start(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        self.inner = MlflowRun(*self._inner_args)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if self.spool:  # left by an earlier process of this run: it goes first
                    replayed = self.spool.replay(self.inner)
                    run_id = run_id or replayed
                self.run_id = self.inner.start(run_name, tags, run_id=run_id)
                break
            except Exception as err:  # noqa: BLE001 - any failure to reach the store counts
                if time.monotonic() + self.probe_every < deadline:
                    time.sleep(self.probe_every)
                    continue
                where = (f"MLflow at {redact_urls(self.tracking_uri)} unreachable for {self.start_timeout:.0f} s "
                         f"({first_line(err)})")
                if self.required:
                    raise TrackingUnavailable(
                        f"{where}: start the server or fix run.tracking_uri, or set "
                        "run.tracking_required=false to train without it") from None
                print(f"warning: {where}; training without tracking: calls are kept in {self.spool.folder} "
                      f"(replay: python -m vitssl.tracking.spool {self.spool.folder.parent})", flush=True)
                self.offline = True
                self.run_id = run_id
                if run_id is None:
                    self.spool.append(None, "start", {"run_name": run_name, "tags": tags})
                else:
                    self.spool.append(run_id, "start", {"run_name": run_name, "tags": tags, "run_id": run_id})
                break
        self._thread = threading.Thread(target=self._send_forever, name="mlflow-sender", daemon=True)
        self._thread.start()
        return self.run_id

    # -- the calls the trainer makes -----------------------------------------------------------
    def _put(self, method: str, **kwargs: Any) -> None:
        if self.enabled and self._thread is not None:
            self._queue.put((self.run_id, method, kwargs))

    def log_params(self, params: dict[str, Any]) -> None:
        self._put("log_params", params={k: str(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._put("set_tags", tags={k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self._put("log_metrics", metrics={k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:  # the caller may delete its file: keep a copy until it is sent
            self._put("log_artifact", path=str(self.spool.keep_file(Path(path))), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put("log_text", text=text, artifact_file=artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """Rendered here (the figure object does not outlive the caller), sent as a PNG file."""
        if self.enabled:
            log_figure_as_png(self.log_artifact, figure, artifact_file)

    def last_step(self, keys: tuple[str, ...]) -> int:
        """As `MlflowRun.last_step`; -1 while the server is unreachable (then the spool holds the rest)."""
        try:
            return self.inner.last_step(keys) if self.inner is not None and not self.offline else -1
        except Exception:  # noqa: BLE001
            return -1

    def end(self, status: str = "FINISHED") -> None:
        """Queue the final status, then wait (bounded) for everything to be sent."""
        if not self.enabled or self._thread is None:
            return
        self._put("end", status=status)
        self.close()

    def close(self) -> None:
        # Wait while the sender makes progress (a slow but live server gets every call); give up
        # after `close_timeout` seconds without progress (a dead one: the rest goes to the spool).
        left, deadline = self._queue.unfinished_tasks, time.monotonic() + self.close_timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            if self._queue.unfinished_tasks < left:
                left, deadline = self._queue.unfinished_tasks, time.monotonic() + self.close_timeout
            time.sleep(0.05)
        with self._switch:
            self.offline = True  # from now on the sender spools instead of sending
            while True:
                try:
                    run_id, method, kwargs = self._queue.get_nowait()
                except queue.Empty:
                    break
                self.spool.append(run_id or self.run_id, method, kwargs)
                self._queue.task_done()
            self._closed = True
        if self.spool:
            print(f"warning: MLflow at {redact_urls(self.tracking_uri)} did not take every call; "
                  f"{len(self.spool.read())} kept in {self.spool.ops_file}: the next resume of this run replays "
                  f"them, or run: python -m vitssl.tracking.spool {self.spool.folder.parent}", flush=True)

    # -- the background sender -----------------------------------------------------------------
    def _send_forever(self) -> None:
        next_probe = 0.0
        while not self._closed:
            try:
                items = [self._queue.get(timeout=self.probe_every)]
            except queue.Empty:
                items = []
            while items and items[-1][1] == "log_metrics" and len(items) < MAX_QUEUED_METRIC_CALLS:
                try:  # a backlog of metric calls (after a slow request) goes as one batch
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._switch:
                if self.offline and time.monotonic() >= next_probe:
                    if self._server_back():
                        self.offline = False
                    else:
                        next_probe = time.monotonic() + self.probe_every
                for group in _groups(items):
                    if self.offline:
                        for run_id, method, kwargs in group:
                            self.spool.append(run_id or self.run_id, method, kwargs)
                    else:
                        self._send(group)
            for _ in items:
                self._queue.task_done()

    def _send(self, group: list[tuple]) -> None:
        """One call, or consecutive metric calls of one run (sent as one batch)."""
        run_id, method, kwargs = group[0]
        try:
            self.inner.run_id = run_id or self.run_id
            if method == "log_metrics":
                self.inner.log_metric_steps([(kw["metrics"], kw["step"]) for _, _, kw in group])
            else:
                apply_call(self.inner, method, kwargs)
            if method == "log_artifact":
                shutil.rmtree(Path(kwargs["path"]).parent, ignore_errors=True)  # our copy, sent
        except Exception as err:  # noqa: BLE001
            if self._server_back():  # the server answers but refused this call: keep it aside
                self.spool.folder.mkdir(parents=True, exist_ok=True)
                with open(self.spool.folder / REJECTED_FILE, "a") as f:
                    f.write(json.dumps({"method": method, "kwargs": kwargs, "error": first_line(err)}) + "\n")
                print(f"warning: MLflow refused {method} ({first_line(err)}); kept in "
                      f"{self.spool.folder / REJECTED_FILE}", flush=True)
                return
            print(f"warning: MLflow at {redact_urls(self.tracking_uri)} unreachable ({first_line(err)}); training goes on, "
                  f"calls are kept in {self.spool.ops_file} until it is back", flush=True)
            self.offline = True
            for run_id_, method_, kwargs_ in group:
                self.spool.append(run_id_ or self.run_id, method_, kwargs_)

    def _server_back(self) -> bool:
        """Reachable again? If so, the spool is replayed first (order kept)."""
        try:
            self.inner.check_reachable()
            if self.spool:
                created = self.spool.replay(self.inner)
                self.run_id = self.run_id or created
                print(f"MLflow at {redact_urls(self.tracking_uri)} is back: spooled calls replayed", flush=True)
            return True
        except Exception:  # noqa: BLE001
            return False
