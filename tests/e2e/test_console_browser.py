"""The operations console in headless Chromium, on figures real ``sync_lead`` runs produced.

New Dataverse leads, some with an address that is no e-mail and some with a last name too long
for Marketo, are carried by one ``sync_lead`` run of the demo stack (:mod:`tests.e2e.browser_support`);
the run loads the good ones and records the others as record errors. The console then has to:
draw the run's records, Marketo calls and Dataverse calls in its charts (counted as SVG
elements against the state store), list exactly the errors of a filter, download exactly those
as CSV, and re-queue exactly that set (checked in the state store).

A second test leaves ``sync_lead`` to its watchers (Airflow's triggerer) and makes every
Marketo person call fail: the console's backlog grows with each new Dataverse lead while no run
can commit, and drains once the faults are lifted and a run carries the leads across.
Screenshots go to ``var/screenshots/console-*.png``.
"""

from __future__ import annotations

import csv
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from sqlalchemy import text

from tests.e2e.browser_support import (
    CHROMIUM_ARGS,
    SCREENSHOTS,
    UI_TIMEOUT_MS,
    Stack,
    cell_int,
    chromium_path,
    log_in,
    reparse,
    run_dag,
    running_stack,
    settle_paused,
    upsert_dynamics,
)
from tests.support.slots import stack_marks

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import Page

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    *stack_marks(minutes=9),  # two stacks; the second waits for watcher-started runs to drain
]

GOOD, BAD_EMAIL, LONG_NAME = 4, 3, 2
RUN_TIMEOUT_S = 180
WATCHER_START_TIMEOUT_S = 180.0  # a parse of the DAG file registers the watchers, then they peek
BACKLOG_TIMEOUT_S = 120.0  # the Dataverse watcher peeks every 5 to 30 s
DRAIN_TIMEOUT_S = 480.0  # a faulted run's retries (30 s, 60 s, ...) or the 5-minute safety schedule
# Every Marketo person call (read, write, describe) fails while the faults are on.
PERSON_FAULTS = {"error_rate": 1.0, "error_codes": ["503"], "endpoints": ["/rest/v1/leads"]}
FILTER = {"entity": "lead", "code": "INVALID_EMAIL"}


@pytest.fixture
def chromium() -> Path:
    return chromium_path()


@pytest.fixture
def stack(tmp_path: Path, stack_slot_held: int) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def _new_leads(env: dict[str, str]) -> dict[str, list[str]]:
    """Dataverse leads for the run: good ones, bad e-mail addresses, last names over 50 characters."""
    tag = uuid.uuid4().hex[:8]
    kinds: dict[str, list[dict[str, Any]]] = {
        "good": [
            {"lastname": f"Console {tag} {i}", "emailaddress1": f"console-{tag}-{i}@example.com"}
            for i in range(GOOD)
        ],
        "bad_email": [
            {"lastname": f"Mail {tag} {i}", "emailaddress1": f"console-{tag}-{i}.example.com"}
            for i in range(BAD_EMAIL)
        ],
        "long_name": [{"lastname": f"Long {tag} {i} " + "L" * 80} for i in range(LONG_NAME)],
    }
    ids: dict[str, list[str]] = {}
    rows = []
    for kind, fields in kinds.items():
        ids[kind] = [str(uuid.uuid4()) for _ in fields]
        rows += [{"leadid": lid, **f} for lid, f in zip(ids[kind], fields, strict=True)]
    upsert_dynamics(env, "leads", "leadid", rows)
    return ids


def _query(state_url: str, sql: str, **params: Any) -> list[Any]:
    from crm_sync.state import make_engine

    engine = make_engine(state_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _errors(state_url: str) -> dict[str, tuple[Any, ...]]:
    """Unresolved record errors: source id → (entity, field, code, attempts, parked, next attempt)."""
    rows = _query(
        state_url,
        "SELECT source_id, entity, field, code, attempts, parked, next_attempt_at FROM record_error"
        " WHERE resolved_at IS NULL",
    )
    return {r[0]: (r[1], r[2], r[3], r[4], bool(r[5]), _as_utc(r[6])) for r in rows}


def _buckets(times: list[Any], seconds: int) -> int:
    """How many distinct ``seconds``-long UTC buckets of the last 24 hours ``times`` fall in."""
    since = datetime.now(UTC) - timedelta(hours=23)  # well inside the page's 24-hour window
    stamps = [t for t in (_as_utc(v) for v in times) if t is not None and t >= since]
    return len({int(t.timestamp()) // seconds for t in stamps})


def test_console_charts_the_run_and_acts_on_exactly_a_filtered_error_set(
    chromium: Path, stack: Stack
) -> None:
    from playwright.sync_api import sync_playwright

    state_url = stack.env["AIRFLOW_VAR_MDS_STATE_DB_URL"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # A first run reads the whole table (history, no latency) and stores the watermarks; the
    # second, incremental run carries the new leads and records their change-to-arrival latency.
    run_id, state = run_dag(stack.api, stack.base, "sync_lead", RUN_TIMEOUT_S)
    assert state == "success", f"sync_lead run {run_id} ended {state}"
    settle_paused(stack.api, stack.base, "sync_lead", RUN_TIMEOUT_S)
    ids = _new_leads(stack.env)
    run_id, state = run_dag(stack.api, stack.base, "sync_lead", RUN_TIMEOUT_S)
    assert state == "success", f"sync_lead run {run_id} ended {state}"
    # No scheduled run may retry the errors while the test compares them.
    settle_paused(stack.api, stack.base, "sync_lead", RUN_TIMEOUT_S)

    # What the run left in the state store: the truth the page is checked against.
    errors = _errors(state_url)
    invalid = {sid for sid, e in errors.items() if (e[0], e[2]) == ("lead", "INVALID_EMAIL")}
    assert set(ids["bad_email"]) <= invalid, errors
    assert {sid for sid in ids["long_name"] if errors.get(sid, ("",) * 3)[2] == "FIELD_LENGTH"} == set(
        ids["long_name"]
    )
    ledger = _query(state_url, "SELECT ended_at, loaded, latency_p50_s, latency_p95_s FROM run_ledger")
    loaded_hours = _buckets([r[0] for r in ledger if r[1]], 3600)
    latency_points = sum((r[2] is not None) + (r[3] is not None) for r in ledger)
    calls = _query(state_url, "SELECT system, at FROM api_call_log WHERE calls > 0")
    marketo_hours = _buckets([at for system, at in calls if system == "marketo"], 3600)
    dynamics_windows = _buckets([at for system, at in calls if system == "dynamics"], 300)
    assert min(loaded_hours, marketo_hours, dynamics_windows) > 0, (ledger, calls)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            log_in(page, stack.base, stack.password)

            # 1. The console: lead's row with its backlog and calls, and the four charts drawn.
            page.goto(f"{stack.base}/crm-sync-status/", wait_until="domcontentloaded")
            lead = page.locator("[data-testid='entity-lead-both']")
            synced_day = cell_int(lead.locator("[data-testid='synced-day']").inner_text())
            backlog = cell_int(lead.locator("[data-testid='backlog-pending']").inner_text())
            calls_today = lead.locator("[data-testid='calls-today']").inner_text()
            page.locator("[data-chart='latency'] svg").wait_for()
            drawn = {
                "loaded": page.locator("[data-chart='synced'] [data-series='loaded'] rect.bar").count(),
                "marketo": page.locator(
                    "[data-chart='marketo'] [data-series='calls per hour'] rect.bar"
                ).count(),
                "dynamics": page.locator("[data-chart='dynamics'] rect.bar").count(),
                "latency": page.locator("[data-chart='latency'] circle.pt").count(),
                "budget": page.locator("[data-chart='marketo'] g.ref").count(),
                "limits": page.locator("[data-chart='dynamics'] g.ref").count(),
            }
            bar_title = page.locator("[data-chart='synced'] rect.bar title").first.text_content() or ""
            page.screenshot(path=str(SCREENSHOTS / "console-01-overview.png"), full_page=True)

            # 2. Filter: lead's invalid e-mail addresses.
            form = page.locator("[data-testid='error-filter']")
            form.locator("select[name='entity']").select_option(FILTER["entity"])
            form.locator("select[name='code']").select_option(FILTER["code"])
            form.locator("[data-testid='apply-filter']").click()
            page.wait_for_url(re.compile(r"code=INVALID_EMAIL"))
            shown = page.locator("[data-testid='error-source']").all_inner_texts()
            page.screenshot(path=str(SCREENSHOTS / "console-02-filtered.png"), full_page=True)

            # 3. CSV export of the filter: a download, not a page.
            with page.expect_download() as download_info:
                page.locator("[data-testid='export-csv']").click()
            download = download_info.value
            with open(download.path(), newline="", encoding="utf-8") as handle:
                exported = list(csv.DictReader(handle))

            # 4. Re-queue the filtered set.
            before = _errors(state_url)
            clicked_at = datetime.now(UTC)
            page.locator("[data-testid='requeue-filtered']").click()
            page.locator("[data-testid='requeued']").wait_for()
            flash = page.locator("[data-testid='requeued']").inner_text()
            still_filtered = page.url
            page.screenshot(path=str(SCREENSHOTS / "console-03-requeued.png"), full_page=True)
        finally:
            browser.close()
    after = _errors(state_url)

    assert synced_day >= GOOD, synced_day
    assert backlog >= 0
    assert re.fullmatch(r"[\d,]+ / [\d,]+", calls_today.strip()), calls_today
    assert drawn["loaded"] == loaded_hours, drawn
    assert drawn["marketo"] == marketo_hours, drawn
    assert drawn["dynamics"] == dynamics_windows, drawn
    assert (drawn["budget"], drawn["limits"]) == (1, 2), drawn
    assert "loaded:" in bar_title, bar_title

    assert sorted(shown) == sorted(invalid), "the filter shows exactly lead's invalid e-mail errors"
    assert re.fullmatch(r"record-errors-\d{8}T\d{6}Z\.csv", download.suggested_filename), (
        download.suggested_filename
    )
    assert sorted(r["source_id"] for r in exported) == sorted(shown), "the CSV holds the errors shown"
    assert {(r["entity"], r["code"], r["field"]) for r in exported} == {
        ("lead", "INVALID_EMAIL", "emailaddress1")
    }

    changed = {sid for sid in before if before[sid] != after[sid]}
    assert changed == invalid, "re-queue changed exactly the filtered set"
    for sid in invalid:
        was, now = before[sid], after[sid]
        assert (now[3], now[4]) == (was[3], False), "retrying errors keep their attempts"
        assert now[5] is not None
        assert was[5] is not None
        assert now[5] < was[5], "their backoff was cut short"
        assert now[5] >= clicked_at - timedelta(seconds=5), "they are due now"
    assert flash.startswith(f"Re-queued {len(invalid)} retrying record error(s)"), flash
    assert "code=INVALID_EMAIL" in still_filtered, still_filtered

    assert latency_points > 0, ledger
    assert drawn["latency"] == latency_points, (drawn, latency_points)


def _plain_leads(env: dict[str, str], count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows = [
        {"leadid": lid, "lastname": f"Backlog {tag} {i}", "emailaddress1": f"backlog-{tag}-{i}@example.com"}
        for i, lid in enumerate(ids)
    ]
    upsert_dynamics(env, "leads", "leadid", rows)
    return ids


def _marketo_faults(env: dict[str, str], faults: dict[str, Any] | None) -> None:
    """Switch the Marketo emulator's injected faults on (``faults``) or off (None)."""
    url = f"https://127.0.0.1:{env['MDS_MARKETO_PORT']}/_emulator/faults"
    ca = Path(env["MDS_STACK_DIR"]) / "var" / "emulators" / "ca" / "ca.pem"
    if faults is None:
        requests.delete(url, verify=str(ca), timeout=30).raise_for_status()
    else:
        requests.put(url, json=faults, verify=str(ca), timeout=30).raise_for_status()


def _poll(what: str, read: Callable[[], int], done: Callable[[int], bool], timeout: float) -> list[int]:
    """Read a figure until ``done(figure)``; every figure read, in order. Fails after ``timeout``."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(read())
        if done(seen[-1]):
            return seen
        time.sleep(3)
    pytest.fail(f"{what}: not within {timeout:.0f} s; the console showed {seen}")


def _console_backlog(page: Page, base: str) -> int:
    page.goto(f"{base}/crm-sync-status/", wait_until="domcontentloaded")
    return cell_int(
        page.locator("[data-testid='entity-lead-both'] [data-testid='backlog-pending']").inner_text()
    )


def _marketo_person_ids(env: dict[str, str], lead_ids: list[str]) -> set[str]:
    from crm_sync_hooks.caches import clear_process_caches
    from crm_sync_hooks.marketo import MarketoHook

    saved = os.environ.get("AIRFLOW_CONN_MARKETO_DEFAULT")
    os.environ["AIRFLOW_CONN_MARKETO_DEFAULT"] = env["AIRFLOW_CONN_MARKETO_DEFAULT"]
    hook = MarketoHook("marketo_default")
    try:
        pages = hook.get_leads("externalPersonId", lead_ids, ["id", "externalPersonId"])
        return {str(p["externalPersonId"]) for page in pages for p in page}
    finally:
        hook.close()
        clear_process_caches()
        if saved is None:
            os.environ.pop("AIRFLOW_CONN_MARKETO_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_MARKETO_DEFAULT"] = saved


def _wait_for_peek(state_url: str, since: datetime) -> None:
    """Wait until lead's Dataverse watcher has peeked (it runs in the triggerer once registered)."""
    deadline = time.monotonic() + WATCHER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = _query(
            state_url,
            "SELECT peeked_at FROM change_backlog WHERE entity = 'lead' AND direction = 'd2m'",
        )
        peeked = [_as_utc(r[0]) for r in rows]
        if any(p is not None and p >= since for p in peeked):
            return
        time.sleep(3)
    pytest.fail(f"lead's Dataverse watcher did not peek within {WATCHER_START_TIMEOUT_S:.0f} s")


def test_console_backlog_grows_while_marketo_fails_and_drains_after(chromium: Path, stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    env = stack.env
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # The first run stores both watermarks; sync_lead then stays unpaused, so its watchers start runs.
    run_id, state = run_dag(stack.api, stack.base, "sync_lead", RUN_TIMEOUT_S)
    assert state == "success", f"sync_lead run {run_id} ended {state}"
    unpaused_at = datetime.now(UTC)
    reparse(stack.api, stack.base, "sync_lead")
    _wait_for_peek(env["AIRFLOW_VAR_MDS_STATE_DB_URL"], unpaused_at)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            log_in(page, stack.base, stack.password)

            def read() -> int:
                return _console_backlog(page, stack.base)

            _marketo_faults(env, PERSON_FAULTS)
            try:
                first = _plain_leads(env, 3)
                grew = _poll(
                    "a backlog of the first leads", read, lambda n: n >= len(first), BACKLOG_TIMEOUT_S
                )
                second = _plain_leads(env, 3)
                more = _poll(
                    "a backlog of both batches",
                    read,
                    lambda n: n >= grew[-1] + len(second),
                    BACKLOG_TIMEOUT_S,
                )
                page.screenshot(path=str(SCREENSHOTS / "console-04-backlog-grows.png"), full_page=True)
            finally:
                _marketo_faults(env, None)
            drained = _poll("the backlog to drain", read, lambda n: n == 0, DRAIN_TIMEOUT_S)
            page.screenshot(path=str(SCREENSHOTS / "console-05-backlog-drained.png"), full_page=True)
        finally:
            browser.close()

    assert grew[-1] >= len(first), grew
    assert more[-1] >= grew[-1] + len(second) > grew[-1], (grew, more)
    assert drained[-1] == 0, drained
    assert _marketo_person_ids(env, first + second) == set(first + second), "the drained leads are in Marketo"
    committed = _query(
        env["AIRFLOW_VAR_MDS_STATE_DB_URL"],
        "SELECT pending, committed_at FROM change_backlog WHERE entity = 'lead' AND direction = 'd2m'",
    )
    assert [(p, c is not None) for p, c in committed] == [(0, True)], committed
