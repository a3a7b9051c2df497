"""What the browser tests share: the demo stack in a temporary folder, Debian Chromium, the REST API.

The stack is the one ``make demo`` starts (``scripts/stack.py``), in a temporary folder with its
own ports and small seeded emulators, activity off. Chromium comes from Debian's package
(``make install-browser``), driven by Playwright for Python; Playwright's own browser downloads
are never used. A test module wraps :func:`running_stack` in its own ``stack`` fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from crm_sync.settings_loader import parse_settings
from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

PROJECT_DIR = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = PROJECT_DIR / "var" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SEED = {"dynamics": 40, "marketo": 10}
UI_TIMEOUT_MS = 90_000  # the UI bundle is 7 MB of JavaScript; a busy 2-core machine parses it slowly


def chromium_path() -> Path:
    """Debian's Chromium; the test is skipped where it is not installed."""
    if not CHROMIUM.exists():
        # make test runs make install-browser first; this skips only where that cannot install it.
        pytest.skip(f"{CHROMIUM} is not installed and could not be (make install-browser needs apt-get)")
    return CHROMIUM


def stack_env(root: Path) -> dict[str, str]:
    """Environment for ``scripts/stack.py``: own folder and ports, connections aimed at them."""
    env = {k: v for k, v in os.environ.items() if k not in ("AIRFLOW_HOME", "MDS_TEST_AIRFLOW_HOME")}
    env.pop("AIRFLOW__CORE__FERNET_KEY", None)
    ports = {
        name: str(free_port())
        for name in (
            "MDS_AIRFLOW_PORT",
            "MDS_MARKETO_PORT",
            "MDS_DYNAMICS_PORT",
            "MDS_ALERT_SINK_PORT",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
        )
    }
    env.update(ports)
    env.update(
        {"MDS_STACK_DIR": str(root), "MDS_ACTIVITY_INTERVAL": "0", "MDS_DEMO_SCALE": str(SEED["dynamics"])}
    )
    var = root / "var"
    ca_file = var / "emulators" / "ca" / "ca.pem"
    limiter = f"sqlite:///{var / 'api_limiter.sqlite'}"
    marketo_url = f"https://127.0.0.1:{ports['MDS_MARKETO_PORT']}"
    dynamics_url = f"https://127.0.0.1:{ports['MDS_DYNAMICS_PORT']}"
    m_cred, d_cred = default_credentials("marketo_default"), default_credentials("dynamics_default")
    env["AIRFLOW_CONN_MARKETO_DEFAULT"] = json.dumps(
        {
            "conn_type": "marketo",
            "host": marketo_url,
            "login": m_cred.client_id,
            "password": m_cred.client_secret,
            "extra": {"ca_bundle": str(ca_file), "timeout": 30, "limiter_url": limiter},
        }
    )
    env["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = json.dumps(
        {
            "conn_type": "dynamics",
            "host": dynamics_url,
            "login": d_cred.client_id,
            "password": d_cred.client_secret,
            "extra": {
                "ca_bundle": str(ca_file),
                "tenant_id": d_cred.tenant_id,
                "authority_host": dynamics_url,
                "api_version": "9.2",
                "timeout": 30,
                "limiter_url": limiter,
            },
        }
    )
    env["AIRFLOW_VAR_MDS_STATE_DB_URL"] = f"sqlite:///{var / 'state.db'}"
    env["AIRFLOW_VAR_MDS_STAGING_PATH"] = f"file://{var / 'staging'}"
    return env


def stack_command(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "stack.py"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=PROJECT_DIR,
    )


# ``make demo``'s own start-up steps (scripts/stack.py: emulators, then Airflow standalone), minus
# unpausing every DAG, triggering full_copy and the activity process: this test must be the one
# that starts sync_lead, and on a 2-core machine nine concurrent DAG runs take minutes. Every DAG
# stays paused until the trigger dialog unpauses sync_lead. Connections and Variables reach
# Airflow as AIRFLOW_CONN_*/AIRFLOW_VAR_* (see _stack_env); the pools of airflow_settings.yaml
# are created through the REST API, which takes a second where the settings loader's three
# Airflow CLI imports take about 20 s on a busy machine.
_START_STEPS = """
import stack
env = stack._base_env()
stack.start_emulators(env)
stack.start_airflow(env)
"""


class RestApi:
    """Airflow's REST API v2 with the admin's JWT (for facts the UI shows only as pictures)."""

    def __init__(self, base: str, password: str) -> None:
        self.base = base
        resp = requests.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        )
        resp.raise_for_status()
        self.headers = {"Authorization": f"Bearer {resp.json()['access_token']}"}

    def get(self, path: str, **params: Any) -> Any:
        resp = requests.get(f"{self.base}/api/v2/{path}", headers=self.headers, params=params, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        resp = requests.post(f"{self.base}/api/v2/{path}", headers=self.headers, json=body, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def manual_runs(self, dag_id: str) -> dict[str, str]:
        runs = self.get(f"dags/{dag_id}/dagRuns", limit=100)["dag_runs"]
        return {r["dag_run_id"]: r["state"] for r in runs if r["run_type"] == "manual"}


def admin_password(root: Path) -> str:
    file = root / ".airflow" / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 60
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return str(json.loads(file.read_text())["admin"])


@dataclass
class Stack:
    """The running stack: its environment, UI address, admin password and REST client."""

    env: dict[str, str]
    base: str
    password: str
    api: RestApi


@contextlib.contextmanager
def running_stack(tmp_path: Path) -> Iterator[Stack]:
    """The demo stack in ``tmp_path``, seeded small (the stack seeds only databases that do not
    exist yet); stopped on leaving. The caller holds a stack slot (fixture ``stack_slot_held``)."""
    env = stack_env(tmp_path)
    emulator_dir = tmp_path / "var" / "emulators"
    emulator_dir.mkdir(parents=True)
    for side, scale in SEED.items():
        db = str(emulator_dir / f"{side}.db")
        argv = [sys.executable, "-m", "emulators", "seed", side, "--db", db, "--scale", str(scale)]
        subprocess.run(argv, env=env, cwd=PROJECT_DIR, check=True, capture_output=True, timeout=120)
    start_env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR / "scripts"), env.get("PYTHONPATH", "")]),
    }
    try:
        started = subprocess.run(
            [sys.executable, "-c", _START_STEPS],
            env=start_env,
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        base = f"http://127.0.0.1:{env['MDS_AIRFLOW_PORT']}"
        password = admin_password(tmp_path)
        api = RestApi(base, password)
        for name, pool in parse_settings(PROJECT_DIR / "airflow_settings.yaml").pools.items():
            api.post("pools", {"name": name, "slots": pool["slots"], "description": pool.get("description")})
        yield Stack(env, base, password, api)
    finally:
        stopped = stack_command("stop", env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def add_dynamics_leads(env: dict[str, str], count: int) -> list[str]:
    """New Dataverse leads, written through the project's DynamicsHook, for a run to carry."""
    tag = uuid.uuid4().hex[:8]
    rows = [
        {
            "leadid": str(uuid.uuid4()),
            "firstname": "Browser",
            "lastname": f"Test {tag} {i}",
            "emailaddress1": f"browser-{tag}-{i}@example.com",
            "jobtitle": "Buyer",
        }
        for i in range(count)
    ]
    upsert_dynamics(env, "leads", "leadid", rows)
    return [r["leadid"] for r in rows]


def cell_int(cell_text: str) -> int:
    """A number shown in a table cell (``1,234``)."""
    return int(cell_text.strip().replace(",", ""))


def upsert_dynamics(env: dict[str, str], entity_set: str, key: str, rows: list[dict[str, Any]]) -> None:
    """Write Dataverse rows through the project's DynamicsHook, aimed at the stack's emulator."""
    from crm_sync_hooks.caches import clear_process_caches
    from crm_sync_hooks.dynamics import DynamicsHook

    saved = os.environ.get("AIRFLOW_CONN_DYNAMICS_DEFAULT")
    os.environ["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = env["AIRFLOW_CONN_DYNAMICS_DEFAULT"]
    hook = DynamicsHook("dynamics_default")
    try:
        results = hook.upsert_records(entity_set, rows, [key], id_column=key)
        assert all(r.ok for r in results), [r for r in results if not r.ok]
    finally:
        hook.close()
        clear_process_caches()
        if saved is None:
            os.environ.pop("AIRFLOW_CONN_DYNAMICS_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = saved


def log_in(page: Page, base: str, password: str) -> None:
    """Sign in to the Airflow UI as the admin `make demo` prints (the session cookie the plugin reads)."""
    page.goto(f"{base}/", wait_until="commit")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))


def run_dag(api: RestApi, base: str, dag_id: str, timeout_s: float) -> tuple[str, str]:
    """Unpause ``dag_id``, trigger one run through the REST API and wait for it to end.

    Returns:
        ``(run_id, state)``; the state is ``success`` or ``failed``, or the last seen one at the deadline.
    """
    _set_paused(api, base, dag_id, False)
    run_id = str(api.post(f"dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"])
    deadline = time.monotonic() + timeout_s
    state = "queued"
    while time.monotonic() < deadline:
        state = str(api.get(f"dags/{dag_id}/dagRuns/{run_id}")["state"])
        if state in ("success", "failed"):
            break
        time.sleep(3)
    return run_id, state


def _set_paused(api: RestApi, base: str, dag_id: str, paused: bool) -> None:
    requests.patch(
        f"{base}/api/v2/dags/{dag_id}", headers=api.headers, json={"is_paused": paused}, timeout=30
    ).raise_for_status()


def _running_runs(api: RestApi, dag_id: str) -> list[str]:
    runs = api.get(f"dags/{dag_id}/dagRuns", limit=100)["dag_runs"]
    return [str(r["dag_run_id"]) for r in runs if r["state"] == "running"]


def settle_paused(api: RestApi, base: str, dag_id: str, timeout_s: float) -> None:
    """Leave ``dag_id`` paused with none of its runs running (a queued one stays queued).

    Airflow's scheduler examines only the running runs of unpaused DAGs
    (``DagRun.get_running_dag_runs_to_examine``), so a run that a watcher or the safety schedule
    started just before the pause would stay ``running`` for ever. Such a run is let finish with
    the DAG unpaused, and the pause is tried again.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        _set_paused(api, base, dag_id, True)
        caught = _running_runs(api, dag_id)
        if not caught:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{dag_id} kept starting runs for {timeout_s:.0f} s: {caught} run now")
        _set_paused(api, base, dag_id, False)
        while set(caught) & set(_running_runs(api, dag_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{dag_id}'s runs {caught} still run {timeout_s:.0f} s after the pause")
            time.sleep(3)


def reparse(api: RestApi, base: str, dag_id: str) -> None:
    """Ask the DAG processor to parse ``dag_id``'s file now (after an unpause: its asset watchers
    are registered only when a parse finds the DAG unpaused)."""
    token = api.get(f"dags/{dag_id}/details")["file_token"]
    requests.put(f"{base}/api/v2/parseDagFile/{token}", headers=api.headers, timeout=30).raise_for_status()
