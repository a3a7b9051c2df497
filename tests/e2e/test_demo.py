"""``make demo`` end to end: a second, isolated demo stack (own folder and ports) on 127.0.0.1.

One stack start serves the whole check, because starting Airflow is the expensive part:
the UI answers with the printed login, every socket the stack listens on is on 127.0.0.1, ``full_copy`` ran
first and every sync DAG is unpaused, the activity process changes both CRMs at a fast rate,
and ``stack.py check`` (``make demo-check``) then finds both systems in agreement. ``stop``
leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from scripts.stack import MARKETING_DAGS
from tests.support.emulator_procs import free_port
from tests.support.slots import stack_marks
from tests.support.wait import wait_until

PROJECT_DIR = Path(__file__).resolve().parents[2]
ACTIVITY_ROUNDS = 3
ACTIVITY_CHANGES = 6  # new Marketo persons, and Dataverse contacts updated, over those rounds
ROUND_LINE = r"round \d+: (\d+) new Marketo persons .*?, (\d+) Dataverse contacts updated"
SUMMARY_LINE = r"^\w+: \d+ Dynamics / \d+ Marketo records; "

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # make demo's start and full copy, then demo-check's six waves of sync runs
    *stack_marks(minutes=6.5),
]


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("AIRFLOW_HOME", "AIRFLOW__CORE__FERNET_KEY", "MDS_TEST_AIRFLOW_HOME", "MDS_ENTITIES_DIR"):
        env.pop(var, None)
    env.update(
        {
            "MDS_STACK_DIR": str(tmp_path),
            "MDS_AIRFLOW_PORT": str(free_port()),
            "MDS_MARKETO_PORT": str(free_port()),
            "MDS_DYNAMICS_PORT": str(free_port()),
            "MDS_ALERT_SINK_PORT": str(free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # A small org and a fast activity, so the test finishes in minutes.
            "MDS_DEMO_SCALE": "100",
            "MDS_ACTIVITY_INTERVAL": "5",
            "MDS_ACTIVITY_LEADS": "2",
            "MDS_ACTIVITY_CONTACTS": "2",
            "MDS_ACTIVITY_OPPORTUNITIES": "1",
        }
    )
    return env


def _stack(command: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "stack.py"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _listeners(pids: set[int]) -> list[tuple[str, int]]:
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port))
    return found


def _tree(run_dir: Path) -> list[psutil.Process]:
    roots = [psutil.Process(int(p.read_text())) for p in run_dir.glob("*.pid")]
    return [proc for root in roots for proc in (root, *root.children(recursive=True))]


def _still_running(procs: list[psutil.Process]) -> list[int]:
    """The pids of ``procs`` that still run: the same process, not a new one given its pid."""
    running = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc.pid)
    return running


class Disagreement(AssertionError):
    """``make demo-check`` found differences between the two systems."""


def test_demo_serves_ui_syncs_live_activity_and_the_check_finds_no_differences(
    stack_env: dict[str, str], tmp_path: Path, stack_slot_held: int
) -> None:
    tree: list[psutil.Process] = []
    try:  # a start that fails or times out half way still has its processes stopped below
        started = _stack("start", stack_env)
        assert started.returncode == 0, started.stdout + started.stderr
        port = stack_env["MDS_AIRFLOW_PORT"]
        assert f"Airflow UI:  http://127.0.0.1:{port}" in started.stdout
        password = json.loads(
            (tmp_path / ".airflow" / "simple_auth_manager_passwords.json.generated").read_text()
        )["admin"]
        assert f"Login:       admin / {password}" in started.stdout
        # the seeded emulators hold everything the entity files need: setup check prints its table
        assert "setup check: everything the entities need is in place" in started.stdout, started.stdout
        assert re.search(r"full_copy triggered \(run manual__", started.stdout), started.stdout
        assert re.search(r"full_copy success after \d+ s", started.stdout), started.stdout

        token = requests.post(
            f"http://127.0.0.1:{port}/auth/token",
            json={"username": "admin", "password": password},
            timeout=30,
        ).json()["access_token"]
        dags = requests.get(
            f"http://127.0.0.1:{port}/api/v2/dags?limit=100",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()["dags"]
        paused = {d["dag_id"]: d["is_paused"] for d in dags}
        sync_dags = {d for d in paused if d.startswith("sync_")}
        assert {"sync_lead", "sync_contact", "sync_opportunity", "sync_custom_new_project"} <= sync_dags
        assert not any(paused[d] for d in sync_dags), paused
        assert set(MARKETING_DAGS) <= sync_dags  # issue 20's DAGs run in the demo too
        # The entity DAGs: the ones demo-check settles and reconciles, one summary line each.
        entity_dags = sync_dags - set(MARKETING_DAGS)
        assert paused["full_copy"] is False
        # The connection a task pauses the sync DAGs with when it finds a refreshed sandbox.
        api_conn = requests.get(
            f"http://127.0.0.1:{port}/api/v2/connections/airflow_api",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        assert (api_conn["conn_type"], api_conn["host"], api_conn["login"]) == (
            "http",
            f"http://127.0.0.1:{port}",
            "admin",
        ), api_conn

        run_dir = tmp_path / ".run"
        assert {p.stem for p in run_dir.glob("*.pid")} >= {
            "airflow",
            "alert-sink",
            "activity",
            "emulator-marketo",
            "emulator-dynamics",
        }
        tree = _tree(run_dir)
        ours = [
            int(stack_env[f"MDS_{name}_PORT"]) for name in ("AIRFLOW", "MARKETO", "DYNAMICS", "ALERT_SINK")
        ]
        listening = _listeners({proc.pid for proc in tree})
        for our_port in ours:
            assert {ip for ip, p in listening if p == our_port} == {"127.0.0.1"}, (our_port, listening)
        # Every socket any process of the demo listens on, not only ours: no log server on all
        # interfaces (airflow standalone's scheduler and triggerer open one on [::]).
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening

        # The activity keeps changing both CRMs (a round every 5 s) while the sync DAGs run.
        log_file = tmp_path / "var" / "log" / "activity.log"

        def activity_rounds() -> list[tuple[str, str]]:
            text = log_file.read_text() if log_file.exists() else ""
            found: list[tuple[str, str]] = re.findall(ROUND_LINE, text)
            enough = (
                len(found) >= ACTIVITY_ROUNDS
                and sum(int(leads) for leads, _ in found) >= ACTIVITY_CHANGES
                and sum(int(contacts) for _, contacts in found) >= ACTIVITY_CHANGES
            )
            return found if enough else []

        wait_until(
            f"{ACTIVITY_ROUNDS} activity rounds with {ACTIVITY_CHANGES} new persons and "
            f"{ACTIVITY_CHANGES} contact updates in {log_file}",
            180,
            activity_rounds,
        )

        checked = _stack("check", stack_env, timeout=900)
        output = checked.stdout + checked.stderr
        assert "activity: paused" in output
        assert "activity: resumed" in output
        settled = re.findall(r"settle: (\S+) run \S+: (\w+)", output)
        assert {dag for dag, _ in settled} == entity_dags, output[-3000:]
        assert all(state == "success" for _, state in settled), settled
        summary = [line for line in checked.stdout.splitlines() if re.match(SUMMARY_LINE, line)]
        assert len(summary) == len(entity_dags), checked.stdout[-3000:]
        agree = all(line.endswith("no differences") for line in summary) and checked.returncode == 0
    finally:
        stopped = _stack("stop", stack_env)
    assert stopped.returncode == 0, stopped.stderr
    assert not list((tmp_path / ".run").glob("*.pid"))
    assert _still_running(tree) == []
    if not agree:
        raise Disagreement(checked.stdout[-8000:])
