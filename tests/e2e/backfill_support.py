"""Helpers of the backfill end-to-end tests: a real Airflow that runs ``airflow backfill create``.

:func:`standalone_airflow` starts ``airflow standalone``'s components through
``crm_sync.local_airflow`` (scheduler, DAG processor, API server on its own SQLite metadata DB,
every listener on 127.0.0.1) with this process's environment, so the emulator connections and
``AIRFLOW_VAR_*`` Variables a test set reach the task processes. :func:`run_backfill` creates a
backfill with the CLI, as a user would, and waits until each of its runs has finished.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from crm_sync.localenv import airflow_env, prepare_sqlite_metadata_db
from tests.support.emulator_procs import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

AIRFLOW = Path(sys.executable).with_name("airflow")
POOLS = ("dynamics_api", "marketo_api")  # airflow_settings.yaml's pools
DONE = ("success", "failed")

BackfillRun = tuple[str, str, str, str]  # run_id, state, data_interval_start, data_interval_end


@dataclass(frozen=True)
class Standalone:
    """A running Airflow: the environment its CLI needs and its metadata DB file."""

    env: dict[str, str]
    db: Path
    log: Path
    proc: subprocess.Popen[bytes]


def airflow_cli(env: dict[str, str], *args: str, timeout: float = 300, tries: int = 5) -> str:
    """Run an ``airflow`` command; SQLite's "database is locked" (the scheduler writing at the
    same moment, airflow3-notes.md) is retried, as a user would."""
    for _ in range(tries):
        done = subprocess.run(
            [str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode == 0 or "database is locked" not in done.stdout + done.stderr:
            break
        time.sleep(3)
    assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    """Wait until the API server answers ``url``; fail with the log's tail if it ends or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow standalone ended ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"Airflow did not answer at {url} within {timeout} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def standalone_airflow(
    tmp_path: Path, parallelism: int = 4, pool_slots: int = 4, dags_folder: Path | None = None
) -> Iterator[Standalone]:
    """A real Airflow for the ``with`` block: DAGs serialized, the sync's pools set; stopped after.

    ``dags_folder`` replaces the project's ``dags/`` (a test's own probe DAG).
    """
    home = tmp_path / "airflow-home"
    port = free_port()
    env = {
        **os.environ,
        **airflow_env(home, parallelism=parallelism),
        **({"AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder)} if dags_folder else {}),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # Airflow starts helper processes as `airflow ...` from PATH.
        "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    prepare_sqlite_metadata_db(home / "airflow.db")
    log = tmp_path / "standalone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crm_sync.local_airflow"],  # standalone, 127.0.0.1 only
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_health(f"http://127.0.0.1:{port}/api/v2/monitor/health", proc, log)
        airflow_cli(env, "dags", "reserialize")
        for pool in POOLS:
            airflow_cli(env, "pools", "set", pool, str(pool_slots), "API calls of the sync")
        yield Standalone(env, home / "airflow.db", log, proc)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)


def backfill_runs(db: Path, dag_id: str) -> list[BackfillRun]:
    """The backfill runs of ``dag_id``, by data interval."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run "
            "WHERE dag_id = ? AND run_type = 'backfill' ORDER BY data_interval_start",
            (dag_id,),
        ).fetchall()


def run_types(db: Path, dag_id: str) -> list[str]:
    """The run type of every run of ``dag_id`` (``backfill``, ``scheduled``, ``manual``...)."""
    with sqlite3.connect(db) as conn:
        return [t for (t,) in conn.execute("SELECT run_type FROM dag_run WHERE dag_id = ?", (dag_id,))]


def _log_tail(airflow: Standalone) -> str:
    return airflow.log.read_text(errors="replace")[-4000:]


def run_backfill(
    airflow: Standalone,
    dag_id: str,
    from_date: str,
    to_date: str,
    runs: int,
    *,
    max_active_runs: int = 3,
    timeout: float = 600,
) -> list[BackfillRun]:
    """``airflow backfill create`` over the paused ``dag_id``, unpause it and wait until its ``runs``
    runs finished.

    The backfill is created while the DAG is paused, when the scheduler picks none of its runs up:
    on SQLite's "database is locked" part-way, Airflow deletes the runs it had made before the CLI
    retries (``backfill._cleanup_partial_backfill``), and a scheduler holding one of them would end
    with ``ObjectDeletedError``.
    """
    airflow_cli(
        airflow.env,
        "backfill",
        "create",
        "--dag-id",
        dag_id,
        "--from-date",
        from_date,
        "--to-date",
        to_date,
        "--max-active-runs",
        str(max_active_runs),
    )
    airflow_cli(airflow.env, "dags", "unpause", dag_id)
    deadline = time.monotonic() + timeout
    while True:
        if airflow.proc.poll() is not None:
            pytest.fail(f"airflow standalone ended ({airflow.proc.returncode}):\n{_log_tail(airflow)}")
        found = backfill_runs(airflow.db, dag_id)
        if len(found) == runs and all(state in DONE for _, state, _, _ in found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{dag_id}: backfill runs not finished: {found}\n{_log_tail(airflow)}")
        time.sleep(3)
