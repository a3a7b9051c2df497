"""``airflow backfill create`` over three months copies exactly the records created in them.

A real Airflow (``airflow standalone``'s components through ``crm_sync.local_airflow``: scheduler,
DAG processor, API server, on its own SQLite metadata DB, every listener on 127.0.0.1) runs the
backfill that the CLI creates, one run per month with
its data interval, as a user would. Users and teams are copied first by a manual run (a backfill
re-copies history after the first copy, so the people records point at exist). Afterwards, for
every other entity, Marketo holds exactly the Dynamics records created in the window that pass
the sync filter (less any reported as record errors), and none created outside it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text

from crm_sync.config import load_entities
from crm_sync.engine.load import marketo_object_path
from crm_sync.localenv import airflow_env, prepare_sqlite_metadata_db
from tests.e2e.conftest import SyncEnv
from tests.e2e.full_copy_support import dynamics_rows, marketo_objects, run_full_copy
from tests.support.emulator_procs import free_port
from tests.support.slots import stack_marks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    *stack_marks(minutes=3),  # standalone's start, then three monthly full_copy runs
]

AIRFLOW = Path(sys.executable).with_name("airflow")
WINDOW = (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
PRIMED = ("user", "team")


def _airflow(env: dict[str, str], *args: str, timeout: float = 300, tries: int = 5) -> str:
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


def _wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
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


def _backfill_runs(db: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run "
            "WHERE dag_id = 'full_copy' AND run_type = 'backfill' ORDER BY data_interval_start"
        ).fetchall()


def _run_types(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [t for (t,) in conn.execute("SELECT run_type FROM dag_run WHERE dag_id = 'full_copy'")]


def _created(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["createdon"]).replace("Z", "+00:00"))


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 2000}], indirect=True)
def test_backfill_of_three_months_copies_exactly_the_records_created_in_them(
    sync_env: SyncEnv, tmp_path: Path, stack_slot_held: int
) -> None:
    entities = load_entities(sync_env.entities_dir)
    run_full_copy(entities=list(PRIMED))

    home = tmp_path / "airflow-home"
    port = free_port()
    env = {
        **os.environ,
        **airflow_env(home, parallelism=4),
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
        _wait_health(f"http://127.0.0.1:{port}/api/v2/monitor/health", proc, log)
        _airflow(env, "dags", "reserialize")
        for pool in ("dynamics_api", "marketo_api"):  # airflow_settings.yaml's pools
            _airflow(env, "pools", "set", pool, "4", "API calls of the sync")
        _airflow(env, "dags", "unpause", "full_copy")
        _airflow(
            env,
            "backfill",
            "create",
            "--dag-id",
            "full_copy",
            "--from-date",
            "2025-04-01",
            "--to-date",
            "2025-06-01",
            "--max-active-runs",
            "3",
        )
        deadline = time.monotonic() + 600
        while True:
            runs = _backfill_runs(home / "airflow.db")
            if len(runs) == 3 and all(state in ("success", "failed") for _, state, _, _ in runs):
                break
            assert time.monotonic() < deadline, f"backfill runs not finished: {runs}"
            time.sleep(3)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
    assert [state for _, state, _, _ in runs] == ["success"] * 3, runs
    # Unpaused for the backfill, yet never scheduled a copy of its own (BackfillOnlyCronTimetable).
    assert _run_types(home / "airflow.db") == ["backfill"] * 3
    starts = [datetime.fromisoformat(str(s)).replace(tzinfo=UTC) for _, _, s, _ in runs]
    assert [d.date().isoformat() for d in starts] == ["2025-04-01", "2025-05-01", "2025-06-01"]

    with sync_env.state().connect() as conn:
        errors = {
            (e, str(i).lower())
            for e, i in conn.execute(
                text("SELECT entity, source_id FROM record_error WHERE resolved_at IS NULL")
            )
        }
    copied_any = 0
    for name, entity in entities.items():
        if name in PRIMED:
            continue
        key = entity.dynamics.key
        select = [key, "createdon"] + (["new_synctomkto"] if entity.dynamics.filter_column else [])
        rows = dynamics_rows(sync_env, entity.dynamics.entity_set, select)
        inside = {
            str(r[key]).lower()
            for r in rows
            if WINDOW[0] <= _created(r) < WINDOW[1] and r.get("new_synctomkto") is not False
        }
        expected = inside - {i for e, i in errors if e == name}
        found = marketo_objects(
            sync_env,
            marketo_object_path(entity),
            entity.marketo.key,
            [str(r[key]) for r in rows],
            [entity.marketo.key],
        )
        keys = [str(r[entity.marketo.key]).lower() for r in found]
        assert len(keys) == len(set(keys)), f"{name}: duplicates"
        assert set(keys) == expected, (
            f"{name}: {len(set(keys) - expected)} extra, {len(expected - set(keys))} missing"
        )
        if name in ("account", "contact", "lead"):
            assert len(expected) >= len(inside) * 0.9, f"{name}: the window was copied"
        copied_any += len(expected)
    assert copied_any > 100, json.dumps(sorted(errors)[:5])
