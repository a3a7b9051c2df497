"""Environment for running this project's Airflow locally (demo, tests, CI).

One place decides where Airflow keeps its home, which folders hold DAGs and plugins, and how
`include/` reaches task processes, so `make demo`, the test suite and CI all agree.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Local-only ports; every server this project starts binds to 127.0.0.1. The environment can move
# them (tests start a second stack beside a running demo that way).
AIRFLOW_API_PORT = int(os.environ.get("MDS_AIRFLOW_PORT", "8080"))
MARKETO_EMULATOR_PORT = int(os.environ.get("MDS_MARKETO_PORT", "8081"))
DYNAMICS_EMULATOR_PORT = int(os.environ.get("MDS_DYNAMICS_PORT", "8082"))


def python_path(project_dir: Path = PROJECT_DIR) -> str:
    """Return the PYTHONPATH that makes `crm_sync`, `crm_sync_hooks` and `emulators` importable."""
    parts = [str(project_dir / "include"), str(project_dir / "plugins"), str(project_dir)]
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
        "PYTHONPATH": python_path(project_dir),
        "MDS_PROJECT_DIR": str(project_dir),
    }
