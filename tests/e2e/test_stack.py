"""`make demo`'s stack script brings up the emulators and Airflow on 127.0.0.1 and stops them by PID.

Runs a second, isolated stack (own directory and ports) so it never touches a developer's demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.emulator_procs import free_port

PROJECT_DIR = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("AIRFLOW_HOME", "AIRFLOW__CORE__FERNET_KEY", "MDS_TEST_AIRFLOW_HOME"):
        env.pop(var, None)
    env.update(
        {
            "MDS_STACK_DIR": str(tmp_path),
            "MDS_AIRFLOW_PORT": str(free_port()),
            "MDS_MARKETO_PORT": str(free_port()),
            "MDS_DYNAMICS_PORT": str(free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
    )
    return env


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "stack.py"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def _listeners(pids: set[int]) -> list[tuple[str, int]]:
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port))
    return found


def test_start_serves_ui_on_localhost_prints_login_and_stop_ends_every_process(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    started = _stack("start", stack_env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        port = stack_env["MDS_AIRFLOW_PORT"]
        assert f"Airflow UI:  http://127.0.0.1:{port}" in started.stdout
        password = json.loads(
            (tmp_path / ".airflow" / "simple_auth_manager_passwords.json.generated").read_text()
        )["admin"]
        assert f"Login:       admin / {password}" in started.stdout

        token = requests.post(
            f"http://127.0.0.1:{port}/auth/token",
            json={"username": "admin", "password": password},
            timeout=30,
        ).json()["access_token"]
        dags = requests.get(
            f"http://127.0.0.1:{port}/api/v2/dags",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()["dags"]
        assert "check_connections" in {d["dag_id"] for d in dags}

        pid_files = sorted((tmp_path / ".run").glob("*.pid"))
        assert {p.stem for p in pid_files} >= {"airflow"}
        roots = {int(p.read_text()) for p in pid_files}
        tree = set(roots)
        for pid in roots:
            tree |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        api_listeners = [addr for addr in _listeners(tree) if addr[1] == int(port)]
        assert api_listeners, "the API server is not listening"
        assert all(ip == "127.0.0.1" for ip, _ in api_listeners)
        for side in ("MARKETO", "DYNAMICS"):
            emu_port = int(stack_env[f"MDS_{side}_PORT"])
            assert {ip for ip, p in _listeners(tree) if p == emu_port} == {"127.0.0.1"}
    finally:
        stopped = _stack("stop", stack_env)
    assert stopped.returncode == 0, stopped.stderr
    assert not list((tmp_path / ".run").glob("*.pid"))
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert alive == []
