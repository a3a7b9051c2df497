"""Run one DAG under a real ``airflow standalone`` and measure each task's own process.

``dag.test()`` runs every task in one process, so what that process holds after one task is
still counted while the next runs. A worker runs each task in a process of its own: Airflow's
LocalExecutor forks one per task instance and names it ``airflow worker -- <task instance id>``.
This module starts the scheduler, DAG processor and API server of ``airflow standalone`` (through
``crm_sync.local_airflow``: the same components without log servers on every interface) on the
benchmark's Airflow home (SQLite metadata DB, LocalExecutor, cron schedules off so only the
triggered run exists), triggers one run, and reads each task process's peak resident memory
(``VmHWM`` in ``/proc/<pid>/status``, the kernel's own high-water mark) while it lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import requests

from tests.support.emulator_procs import PROJECT_DIR, free_port

if TYPE_CHECKING:
    from crm_sync.airflow_api import AirflowApi

log = logging.getLogger(__name__)

AIRFLOW = Path(sys.executable).with_name("airflow")
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f-]{36})")
POOLS = ("dynamics_api", "marketo_api")  # the pools of airflow_settings.yaml
KB = 1024


def _peak_kb(pid: int) -> int | None:
    """The process's peak resident set (``VmHWM``), in KiB; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


@dataclass
class TaskProcessSampler:
    """Watches for task processes (by their title) and keeps each one's peak RSS.

    Attributes:
        interval: Seconds between scans.
        peaks_kb: Task instance id (hex, no dashes) → highest ``VmHWM`` seen for its process.
    """

    interval: float = 0.25
    peaks_kb: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TaskProcessSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._scan()
            except (psutil.Error, OSError):  # a process ended mid-scan: the next scan sees the rest
                log.debug("task process scan interrupted", exc_info=True)
            self._stop.wait(self.interval)

    def _scan(self) -> None:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            match = TASK_TITLE.search(cmdline)
            if not match:
                continue
            peak = _peak_kb(int(proc.info["pid"]))
            if peak is not None:
                ti_id = match.group(1).replace("-", "")
                self.peaks_kb[ti_id] = max(peak, self.peaks_kb.get(ti_id, 0))


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    text = str(value).replace(" ", "T")
    moment = datetime.fromisoformat(text)
    return moment.timestamp()


class Standalone:
    """``airflow standalone`` on ``env``'s Airflow home, stopped (whole process group) on exit."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        parallelism: int = 4,
        *,
        schedules: bool = False,
        pool_slots: int = 4,
    ):
        self.port = free_port()
        self.home = Path(env["AIRFLOW_HOME"])
        self.workdir = workdir
        self.pool_slots = pool_slots
        self.schedules = schedules
        self.env = {
            **env,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # Without schedules only the run the benchmark triggers exists (no run for the latest
            # schedule interval), and every other DAG stays paused: an unpaused sync DAG's change
            # watchers poll both APIs from the triggerer, and their peeks would count as calls of
            # the measured run (the trickle benchmark measures them). With schedules (the trickle
            # scenario) the stack runs as the demo's does: the benchmark unpauses what the demo does.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(schedules),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "PATH": f"{AIRFLOW.parent}{os.pathsep}{env.get('PATH', '')}",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "standalone.log"

    def __enter__(self) -> Standalone:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crm_sync.local_airflow"],  # standalone, 127.0.0.1 only
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_DIR,
                start_new_session=True,
            )
        self._wait_healthy(timeout=300)
        self.cli("dags", "reserialize")
        for pool in POOLS:
            self.cli("pools", "set", pool, str(self.pool_slots), "API calls of the sync")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow standalone ended:\n{self.log_path.read_text()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=5).status_code == 200:
                    return
            time.sleep(2)
        raise TimeoutError(f"airflow standalone not healthy after {timeout}s")

    @property
    def base_url(self) -> str:
        """The API server's address (127.0.0.1 only)."""
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> AirflowApi:
        """A logged-in REST API client (the admin the simple auth manager generated); close it after use."""
        from crm_sync.airflow_api import AirflowApi, admin_password

        return AirflowApi(self.base_url, "admin", admin_password(self.home, timeout_s=120))

    def cli(self, *args: str, tries: int = 5) -> str:
        """Run ``airflow <args>``; retried, since SQLite may be locked by the scheduler for a moment."""
        last = ""
        for _ in range(tries):
            proc = subprocess.run(
                [str(AIRFLOW), *args], env=self.env, capture_output=True, text=True, timeout=300, check=False
            )
            if proc.returncode == 0:
                return proc.stdout
            last = proc.stdout[-2000:] + proc.stderr[-2000:]
            time.sleep(3)
        raise RuntimeError(f"airflow {' '.join(args)} failed: {last}")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)

    def run(self, dag_id: str, timeout: float) -> dict[str, Any]:
        """Trigger ``dag_id``, wait for the run to end; its state, duration and task instances.

        Each task instance row carries ``peak_rss_mb``: the peak of its own process.
        """
        run_id = f"bench__{time.time_ns()}"
        with TaskProcessSampler() as sampler:
            started = time.monotonic()
            if not self.schedules:
                self.cli("dags", "unpause", dag_id)
            self.cli("dags", "trigger", dag_id, "--run-id", run_id)
            state = "queued"
            deadline = started + timeout
            while time.monotonic() < deadline:
                with contextlib.closing(self._db()) as db:
                    row = db.execute(
                        "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
                    ).fetchone()
                state = str(row[0]) if row else "queued"
                if state in ("success", "failed"):
                    break
                time.sleep(2)
            seconds = time.monotonic() - started
        with contextlib.closing(self._db()) as db:
            rows = db.execute(
                "SELECT id, task_id, map_index, state, start_date, end_date, duration FROM task_instance "
                "WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        tasks = []
        for ti_id, task_id, map_index, ti_state, start, end, duration in rows:
            # SQLite keeps the UUID as 32 hex digits; the process title has the dashed form.
            peak = sampler.peaks_kb.get(str(ti_id).replace("-", ""))
            tasks.append(
                {
                    "task_id": task_id,
                    "map_index": map_index,
                    "state": str(ti_state),
                    "start": _epoch(start),
                    "end": _epoch(end),
                    "seconds": round(float(duration), 3) if duration is not None else None,
                    "peak_rss_mb": round(peak / KB, 1) if peak else None,
                }
            )
        tasks.sort(key=lambda t: (t["start"] or 0.0, t["map_index"]))
        return {"dag_id": dag_id, "run_id": run_id, "state": state, "run_seconds": seconds, "tasks": tasks}
