"""A user's path through the Airflow UI in headless Chromium: log in, find the sync DAGs, trigger
``sync_lead``, see it succeed, and read the sync status view.

The stack is the one ``make demo`` starts (``scripts/stack.py``), in a temporary folder with its
own ports and small seeded emulators, activity off. Chromium comes from Debian's package
(``make install-browser``), driven by Playwright for Python; Playwright's own browser downloads
are never used. Screenshots of every step go to ``var/screenshots/``.
"""

from __future__ import annotations

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
from typing import Any

import pytest
import requests
from sqlalchemy import text

from crm_sync.settings_loader import parse_settings
from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import free_port
from tests.support.slots import stack_marks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    *stack_marks(minutes=2.5),  # the stack's start, then one sync_lead run driven from the UI
]

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
NEW_LEADS = 5
UI_TIMEOUT_MS = 90_000  # the UI bundle is 7 MB of JavaScript; a busy 2-core machine parses it slowly
RUN_TIMEOUT_S = 150


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        # make test runs make install-browser first; this skips only where that cannot install it.
        pytest.skip(f"{CHROMIUM} is not installed and could not be (make install-browser needs apt-get)")
    return CHROMIUM


def _stack_env(root: Path) -> dict[str, str]:
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


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
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


def _admin_password(root: Path) -> str:
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


@pytest.fixture
def stack(tmp_path: Path, stack_slot_held: int) -> Iterator[Stack]:
    """The demo stack, seeded small (the stack seeds only databases that do not exist yet)."""
    env = _stack_env(tmp_path)
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
        password = _admin_password(tmp_path)
        api = RestApi(base, password)
        for name, pool in parse_settings(PROJECT_DIR / "airflow_settings.yaml").pools.items():
            api.post("pools", {"name": name, "slots": pool["slots"], "description": pool.get("description")})
        yield Stack(env, base, password, api)
    finally:
        stopped = _stack("stop", env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _add_dynamics_leads(env: dict[str, str], count: int) -> list[str]:
    """New Dataverse leads, written through the project's DynamicsHook, for the run to carry."""
    from crm_sync_hooks.caches import clear_process_caches
    from crm_sync_hooks.dynamics import DynamicsHook

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
    saved = os.environ.get("AIRFLOW_CONN_DYNAMICS_DEFAULT")
    os.environ["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = env["AIRFLOW_CONN_DYNAMICS_DEFAULT"]
    hook = DynamicsHook("dynamics_default")
    try:
        results = hook.upsert_records("leads", rows, ["leadid"], id_column="leadid")
        assert all(r.ok for r in results), [r for r in results if not r.ok]
    finally:
        hook.close()
        clear_process_caches()
        if saved is None:
            os.environ.pop("AIRFLOW_CONN_DYNAMICS_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_DYNAMICS_DEFAULT"] = saved
    return [r["leadid"] for r in rows]


def _park_a_lead_error(state_url: str) -> str:
    """A parked record error of a (made-up) Dataverse lead, as the engine records one."""
    import pandas as pd

    from crm_sync.state import RetryPolicy, make_engine, record_errors, session_scope

    record_id = str(uuid.uuid4())
    error = {
        "entity": "lead",
        "direction": "d2m",
        "record_id": record_id,
        "field": "emailaddress1",
        "code": "INVALID_EMAIL",
        "reason": "not an e-mail address",
    }
    engine = make_engine(state_url)
    try:
        with session_scope(engine) as s:
            record_errors(s, pd.DataFrame([error]), run_id="browser-test", policy=RetryPolicy(max_attempts=1))
    finally:
        engine.dispose()
    return record_id


def _parked_ids(state_url: str) -> list[str]:
    from crm_sync.state import make_engine, parked_errors, session_scope

    engine = make_engine(state_url)
    try:
        with session_scope(engine) as s:
            return list(parked_errors(s, entity="lead")["source_id"])
    finally:
        engine.dispose()


def _int(cell_text: str) -> int:
    return int(cell_text.strip().replace(",", ""))


def test_login_trigger_sync_lead_and_read_the_status_view(chromium: Path, stack: Stack) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base, password, api = stack.base, stack.password, stack.api
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("browser-*.png"):
        old.unlink()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)

            def shot(name: str, *, full_page: bool = False) -> None:
                page.screenshot(path=str(SCREENSHOTS / f"browser-{name}.png"), full_page=full_page)

            # 1. Log in with the admin login `make demo` prints.
            page.goto(f"{base}/", wait_until="commit")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            shot("01-login")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
            page.get_by_role("link", name="Dags").first.wait_for()
            shot("02-home")

            # 2. The DAG list shows the sync DAGs.
            page.goto(f"{base}/dags?dag_id_pattern=sync_", wait_until="commit")
            page.get_by_role("link", name="sync_lead", exact=True).wait_for()
            names = set(page.get_by_role("link").all_inner_texts())
            assert {"sync_lead", "sync_contact", "sync_account", "sync_user"} <= names, sorted(names)
            shot("03-dag-list")

            # 3. Trigger sync_lead from its page, with new Dataverse leads for it to carry.
            _add_dynamics_leads(stack.env, NEW_LEADS)
            before = api.manual_runs("sync_lead")
            page.get_by_role("link", name="sync_lead", exact=True).click()
            page.wait_for_url(re.compile(r"/dags/sync_lead"))
            dialog = page.get_by_role("dialog")
            for attempt in range(3):
                # A click that lands while the page is still hydrating opens nothing; try again.
                page.get_by_role("button", name="Trigger").first.click()
                try:
                    dialog.get_by_text("Trigger Dag - sync_lead").wait_for(timeout=UI_TIMEOUT_MS // 3)
                    break
                except PlaywrightTimeout:
                    shot(f"04-no-dialog-{attempt}")
                    page.reload(wait_until="commit")
                    page.get_by_role("button", name="Trigger").first.wait_for()
            else:
                pytest.fail("the Trigger dialog of sync_lead did not open after three clicks")
            unpause = dialog.get_by_role("checkbox", name=re.compile("Unpause sync_lead on trigger"))
            try:
                unpause.check(timeout=UI_TIMEOUT_MS // 3)
            except PlaywrightTimeout:
                # Not offered (the DAG is not paused any more): make sure through the REST API.
                requests.patch(
                    f"{base}/api/v2/dags/sync_lead",
                    headers=api.headers,
                    json={"is_paused": False},
                    timeout=30,
                ).raise_for_status()
            shot("04-trigger-dialog")
            dialog.get_by_role("button", name="Trigger").click()
            page.get_by_text("Dag Run Triggered").first.wait_for()
            shot("05-triggered")

            # 4. Wait for that run (REST API v2 tells which run the click created) and show it.
            deadline = time.monotonic() + RUN_TIMEOUT_S
            run_id, state = None, None
            while time.monotonic() < deadline:
                new = {k: v for k, v in api.manual_runs("sync_lead").items() if k not in before}
                if new:
                    assert len(new) == 1, new
                    ((run_id, state),) = new.items()
                    if state in ("success", "failed"):
                        break
                time.sleep(3)
            assert run_id is not None, "the UI trigger created no manual run of sync_lead"
            page.goto(f"{base}/dags/sync_lead/runs/{run_id}", wait_until="commit")
            page.get_by_text(run_id).first.wait_for()
            shot(f"06-run-{state}")
            assert state == "success", f"sync_lead run {run_id} ended {state}"

            # 5. Browse → Sync status: the plugin page inside the UI shows lead's counts, and a
            #    parked record error that its Re-queue button (a form POST with the session
            #    cookie, the signed token and the page's own Origin) makes due again.
            parked_id = _park_a_lead_error(stack.env["AIRFLOW_VAR_MDS_STATE_DB_URL"])
            page.goto(f"{base}/", wait_until="commit")
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Sync status").click()
            frame = page.frame_locator("iframe[title='Sync status']")
            lead = frame.locator("[data-testid='entity-lead-both']")
            lead.wait_for()
            shot("07-sync-status", full_page=True)
            synced_day = _int(lead.locator("[data-testid='synced-day']").inner_text())
            synced_hour = _int(lead.locator("[data-testid='synced-hour']").inner_text())
            row_text = lead.inner_text()
            error_row = frame.locator("[data-testid='error-row']", has_text=parked_id)
            assert "parked" in error_row.inner_text()
            error_row.get_by_role("button", name="Re-queue").click()
            frame.locator("[data-testid='requeued']").wait_for()
            flash = frame.locator("[data-testid='requeued']").inner_text()
            shot("08-requeued", full_page=True)
        finally:
            browser.close()

    # The same figures from the state store directly: what the page shows is what the ledger holds.
    from crm_sync.state import make_engine

    engine = make_engine(stack.env["AIRFLOW_VAR_MDS_STATE_DB_URL"])
    try:
        with engine.connect() as conn:
            mine = conn.execute(
                text("SELECT status, loaded FROM run_ledger WHERE entity = 'lead' AND run_id = :r"),
                {"r": run_id},
            ).one()
            total = conn.execute(
                text("SELECT coalesce(sum(loaded), 0) FROM run_ledger WHERE entity = 'lead'")
            ).scalar()
    finally:
        engine.dispose()
    assert mine.status == "success"
    assert flash.startswith("Re-queued 1 parked record error"), flash
    assert parked_id not in _parked_ids(stack.env["AIRFLOW_VAR_MDS_STATE_DB_URL"])
    assert synced_hour >= NEW_LEADS, row_text  # the new leads were written by a run that just ended
    assert synced_day >= synced_hour
    assert 0 < synced_day <= int(total or 0), (row_text, total)
    assert "never" not in row_text
