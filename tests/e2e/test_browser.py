"""A user's path through the Airflow UI in headless Chromium: log in, find the sync DAGs, trigger
``sync_lead``, see it succeed, and read the sync status view.

The stack and Chromium come from :mod:`tests.e2e.browser_support`. Screenshots of every step go
to ``var/screenshots/``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from tests.e2e.browser_support import (
    CHROMIUM_ARGS,
    SCREENSHOTS,
    UI_TIMEOUT_MS,
    Stack,
    add_dynamics_leads,
    cell_int,
    chromium_path,
    running_stack,
)
from tests.support.slots import stack_marks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    *stack_marks(minutes=2.5),  # the stack's start, then one sync_lead run driven from the UI
]

NEW_LEADS = 5
RUN_TIMEOUT_S = 150


@pytest.fixture
def chromium() -> Path:
    return chromium_path()


@pytest.fixture
def stack(tmp_path: Path, stack_slot_held: int) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


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
            add_dynamics_leads(stack.env, NEW_LEADS)
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
            synced_day = cell_int(lead.locator("[data-testid='synced-day']").inner_text())
            synced_hour = cell_int(lead.locator("[data-testid='synced-hour']").inner_text())
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
