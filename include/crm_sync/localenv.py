"""Environment for running this project's Airflow locally (demo, tests, CI).

One place decides where Airflow keeps its home, which folders hold DAGs and plugins, and how
`include/` reaches task processes, so `make demo`, the test suite and CI all agree.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Local-only ports; every server this project starts binds to 127.0.0.1. The environment can move
# them (tests start a second stack beside a running demo that way).
AIRFLOW_API_PORT = int(os.environ.get("MDS_AIRFLOW_PORT", "8080"))
MARKETO_EMULATOR_PORT = int(os.environ.get("MDS_MARKETO_PORT", "8081"))
DYNAMICS_EMULATOR_PORT = int(os.environ.get("MDS_DYNAMICS_PORT", "8082"))

# Connection arguments of Airflow's SQLite metadata DB (``[database] sql_alchemy_connect_args``
# names this dict). Under ``airflow standalone`` the scheduler, DAG processor, API server and
# triggerer all write to that one file; on a busy machine a writer can hold the lock longer than
# pysqlite's default 5 s wait, and the scheduler then exits on "database is locked" (seen on a
# 2-core machine running the demo beside other work). Each connection waits up to 15 s: with a
# minute, an API server on the same loaded machine once stopped answering for over 30 s (its
# request threads and pooled connections all waiting), so the wait stays under SQLAlchemy's 30 s
# pool timeout and a client's 30 s read timeout.
SQLITE_CONNECT_ARGS: dict[str, object] = {"timeout": 15.0}


def python_path(project_dir: Path = PROJECT_DIR) -> str:
    """Return the PYTHONPATH that makes `crm_sync`, `crm_sync_hooks` and `emulators` importable.

    It also holds ``include/airflow_config``, where Airflow finds this project's
    ``airflow_local_settings.py`` (task modules imported before tasks are forked,
    :mod:`crm_sync.preload`).
    """
    parts = [
        str(project_dir / "include"),
        str(project_dir / "plugins"),
        str(project_dir),
        str(project_dir / "include" / "airflow_config"),
    ]
    existing = os.environ.get("PYTHONPATH")
    if existing:
        parts.append(existing)
    return os.pathsep.join(parts)


def airflow_env(airflow_home: Path, project_dir: Path = PROJECT_DIR, parallelism: int = 8) -> dict[str, str]:
    """Return the environment variables for an Airflow that serves this project's DAGs.

    Args:
        airflow_home: Directory for airflow.cfg, the SQLite metadata DB and logs.
        project_dir: The project checkout.
        parallelism: Worker slots; the default 32 costs about 1.7 GB on a small machine.
    """
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_dir / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_dir / "plugins"),
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(AIRFLOW_API_PORT),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{AIRFLOW_API_PORT}",
        # New DAG files show up within 30 s instead of the default 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__CATCHUP_BY_DEFAULT": "False",
        # SQLite only: a stack on another database drops it (scripts/prod_stack.py).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "crm_sync.localenv.SQLITE_CONNECT_ARGS",
        "PYTHONPATH": python_path(project_dir),
        "MDS_PROJECT_DIR": str(project_dir),
    }


def prepare_sqlite_metadata_db(db_file: Path) -> None:
    """Create Airflow's SQLite metadata DB file in write-ahead-log mode, if it does not exist yet.

    In WAL mode readers (the API server answering the UI, the scheduler's queries) no longer wait
    for a writer, nor a writer for them; the mode is stored in the file, so every component that
    opens it later uses it, and ``airflow db migrate`` (run by ``airflow standalone``) fills it.
    """
    if db_file.exists():
        return
    db_file.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
