"""Run guards end to end with real ``dag.test()`` runs of ``sync_contact`` against both emulators.

* mapped columns dropped, renamed or retyped in the Dataverse schema stop the run in
  ``preflight``, before any read or write, each named in the error and in the failure alert;
* a bulk delete of 30 % of the linked contacts is stopped by the mass-delete guard (nothing is
  flagged in Marketo) until a run triggered with ``confirm_deletes`` flags them;
* a narrowed security role (the emulator hides 30 of 40 contacts) stops the run in ``preflight``
  until the rows are visible again or a run is triggered with ``accept_row_counts``;
* with the Marketo emulator's daily quota set low, a run whose load does not fit stops before
  writing and the reserve stays untouched (the emulator's own day counter proves it); the run
  ledger's ``api_calls`` equals the calls the emulators counted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv, write_calls

pytestmark = pytest.mark.e2e


class _AlertSink(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []  # noqa: RUF012 - reset by the fixture for each test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _AlertSink.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Failure alerts POSTed by the DAGs' notifier to a local webhook sink."""
    _AlertSink.received = []
    server = HTTPServer(("127.0.0.1", 0), _AlertSink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/alerts")
    yield _AlertSink.received
    server.shutdown()


def _contacts(env: SyncEnv, ids: list[str], **extra: Any) -> None:
    rows = [{"contactid": guid, "lastname": f"Person {i}", **extra} for i, guid in enumerate(ids)]
    hook = env.dyn()
    try:
        assert all(r.ok for r in hook.upsert_records("contacts", rows, ["contactid"], id_column="contactid"))
    finally:
        hook.close()


def _failed_run(env: SyncEnv, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, str]:
    """One ``dag.test()`` run expected to fail; returns the state of each task.

    Retries are switched off so that a task failing for another reason than a guard ends now
    (a guard's failure is never retried anyway).
    """
    dag = env.dag(dag_id)
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf=conf)
    assert run.state == "failed", f"{dag_id} run ended {run.state}"
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _flagged(env: SyncEnv, ids: list[str]) -> set[str]:
    hook = env.mkto()
    try:
        pages = hook.get_leads("externalPersonId", ids, ["externalPersonId", "msdIsDeleted"])
        return {r["externalPersonId"] for page in pages for r in page if r.get("msdIsDeleted") is True}
    finally:
        hook.close()


def _api_calls(stats: dict[str, Any]) -> int:
    """Calls an emulator counted, token and discovery requests left out."""
    calls: dict[str, int] = dict(stats.get("calls", {}))
    skip = ("/identity/", "oauth2", "openid-configuration", "discovery")
    return sum(n for route, n in calls.items() if not any(s in route for s in skip))


def test_dropped_renamed_retyped_columns_stop_the_run_before_any_write_and_alert(
    sync_env: SyncEnv, new_guid: Callable[[], str], alerts: list[dict[str, Any]]
) -> None:
    ids = [new_guid() for _ in range(2)]
    _contacts(sync_env, ids, jobtitle="Engineer")
    sync_env.run("sync_contact")  # the accepted schema snapshot is stored here
    for change in (
        {"drop": "jobtitle"},
        {"rename": {"from": "mobilephone", "to": "new_mobile"}},
        {"drop": "telephone1"},
        {"add": {"name": "telephone1", "type": "Integer"}},  # the same column, now a number
    ):
        sync_env.dynamics.admin("POST", "schema", json={"entity": "contact", **change})
    _contacts(sync_env, ids, firstname="Changed")
    sync_env.reset_stats()

    states = _failed_run(sync_env, "sync_contact")

    assert states["preflight"] == "failed"
    assert states["extract_changes"] == "upstream_failed"
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}
    (alert,) = alerts
    assert alert["task_id"] == "preflight"
    assert "Dataverse contact.jobtitle (mapped to Marketo title) no longer exists" in alert["error"]
    assert "contact.mobilephone (mapped to Marketo mobilePhone) no longer exists" in alert["error"]
    assert "new_mobile (renamed?)" in alert["error"]
    assert (
        "contact.telephone1 (mapped to Marketo phone) changed type String -> Integer, "
        "which cast string cannot use" in alert["error"]
    )
    with sync_env.state().connect() as conn:
        statuses = conn.execute(text("SELECT status FROM run_ledger ORDER BY id")).scalars().all()
    assert statuses == ["success", "schema_drift"]


def test_mass_delete_waits_for_confirmation_then_flags(
    sync_env: SyncEnv, new_guid: Callable[[], str], alerts: list[dict[str, Any]]
) -> None:
    ids = [new_guid() for _ in range(40)]
    _contacts(sync_env, ids)
    sync_env.run("sync_contact")
    gone = ids[:12]  # 30 % of the linked contacts
    hook = sync_env.dyn()
    try:
        assert all(r.ok for r in hook.delete_records("contacts", gone))
    finally:
        hook.close()
    sync_env.reset_stats()

    states = _failed_run(sync_env, "sync_contact")

    assert states["guard"] == "failed"
    assert states["commit"] == "upstream_failed"
    assert write_calls(sync_env.marketo.stats()) == {}
    assert _flagged(sync_env, ids) == set()
    (alert,) = alerts
    assert alert["task_id"] == "guard"
    assert "12 of 40 linked records (30%" in alert["error"]
    assert "confirm_deletes" in alert["error"]

    run = sync_env.dag("sync_contact").test(run_conf={"confirm_deletes": True})

    assert run.state == "success"
    assert _flagged(sync_env, ids) == set(gone)


def test_low_daily_quota_stops_the_run_and_leaves_the_reserve(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    quota, reserve = 20, 4  # reserve share 0.2
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MARKETO_DAILY_QUOTA", str(quota))
    monkeypatch.setenv("AIRFLOW_VAR_MDS_QUOTA_RESERVE_SHARE", "0.2")
    contact_yaml = sync_env.entities_dir / "contact.yaml"
    contact_yaml.write_text(contact_yaml.read_text().replace("batch_size: 300", "batch_size: 5"))
    _contacts(sync_env, [new_guid() for _ in range(20)])
    sync_env.marketo.admin("PUT", "limits", json={"daily_quota": quota})
    sync_env.marketo.admin("POST", "reset-counters")
    sync_env.reset_stats()

    first = sync_env.run("sync_contact")  # 4 load calls of 5 contacts each: fits

    with sync_env.state().connect() as conn:
        (api_calls,) = conn.execute(
            text("SELECT api_calls FROM run_ledger WHERE run_id = :r"), {"r": first.run_id}
        ).one()
    spent = _api_calls(sync_env.marketo.stats())
    assert api_calls == spent + _api_calls(sync_env.dynamics.stats())
    assert 4 < spent < quota - reserve

    _contacts(sync_env, [new_guid() for _ in range(60)])  # 12 more load calls: cannot fit
    sync_env.reset_stats()

    states = _failed_run(sync_env, "sync_contact")

    assert states["guard"] == "failed"
    assert write_calls(sync_env.marketo.stats()) == {}
    day_calls = sync_env.marketo.admin("GET", "limits").json()["counters"]["day_calls"]
    assert day_calls <= quota - reserve, "the sync ate into the reserve"
    assert sync_env.marketo.stats()["limit_hits"] == {}, "the emulator never had to refuse a call"
    from crm_sync.guards.quota import quota_status
    from crm_sync.state import session_scope, utcnow

    with session_scope(sync_env.state()) as session:
        status = quota_status(session, now=utcnow(), daily_quota=quota, reserve_share=0.2)
    assert status["used_today"] == day_calls
    assert status["left"] == quota - reserve - day_calls


def test_low_priority_entity_is_deferred_when_budget_is_short_then_syncs_later(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MARKETO_DAILY_QUOTA", "40")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_QUOTA_LOW_PRIORITY_HEADROOM", "0.9")  # keep 29 of 32 usable
    contact_yaml = sync_env.entities_dir / "contact.yaml"
    text_ = contact_yaml.read_text().replace("batch_size: 300", "batch_size: 5")
    contact_yaml.write_text(text_.replace("priority: 40", "priority: 40\nquota_priority: low"))
    ids = [new_guid() for _ in range(20)]
    _contacts(sync_env, ids)
    sync_env.reset_stats()

    run = sync_env.run("sync_contact")

    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert (states["guard"], states["commit"]) == ("skipped", "skipped")
    assert write_calls(sync_env.marketo.stats()) == {}
    with sync_env.state().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM watermark WHERE entity = 'contact'")).scalar() == 0
        assert conn.execute(text("SELECT status FROM run_ledger")).scalars().all() == ["deferred"]

    monkeypatch.delenv("AIRFLOW_VAR_MDS_QUOTA_LOW_PRIORITY_HEADROOM")
    sync_env.run("sync_contact")

    hook = sync_env.mkto()
    try:
        pages = hook.get_leads("externalPersonId", ids, ["externalPersonId"])
        synced = {r["externalPersonId"] for page in pages for r in page}
    finally:
        hook.close()
    assert synced == set(ids), "the deferred changes were kept and synced by the next run"


def _split_guids(visible: int, hidden: int) -> tuple[list[str], list[str]]:
    """GUIDs the emulator's ``visible_fraction`` 0.25 shows (first hex digit 0-3) and hides."""
    import uuid

    def make(first: str) -> str:
        return first + str(uuid.uuid4())[1:]

    return [make("1") for _ in range(visible)], [make("b") for _ in range(hidden)]


def test_a_narrowed_role_stops_the_sync_until_the_rows_return_or_the_count_is_accepted(
    sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch, alerts: list[dict[str, Any]]
) -> None:
    shown, hidden = _split_guids(10, 30)
    _contacts(sync_env, shown + hidden)
    sync_env.run("sync_contact")  # the first read sees the whole table: 40 rows
    monkeypatch.setenv("AIRFLOW_VAR_MDS_VISIBILITY_CHECK_MINUTES", "0")  # count on every run
    sync_env.dynamics.admin("POST", "visibility", json={"table": "contact", "visible_fraction": 0.25})
    _contacts(sync_env, shown[:1], jobtitle="Changed")
    sync_env.reset_stats()

    states = _failed_run(sync_env, "sync_contact")

    assert states["preflight"] == "failed"
    assert write_calls(sync_env.marketo.stats()) == {}
    assert sync_env.dynamics.stats()["calls"].get("GET /api/data/v9.2/contacts/$count") == 1
    (alert,) = alerts
    assert alert["task_id"] == "preflight"
    assert "contact: the Dynamics application user sees 10 rows, the last full read saw 40" in alert["error"]
    with sync_env.state().connect() as conn:
        status = conn.execute(
            text("SELECT status FROM run_ledger WHERE entity='contact' ORDER BY started_at DESC")
        ).scalar()
    assert status == "visibility"

    # The role is mended: the run goes on. Narrowed on purpose: accepted, and the new baseline.
    sync_env.dynamics.admin("POST", "visibility", json={"table": "contact", "visible_fraction": 1})
    sync_env.run("sync_contact")
    sync_env.dynamics.admin("POST", "visibility", json={"table": "contact", "visible_fraction": 0.25})
    run = sync_env.dag("sync_contact").test(run_conf={"accept_row_counts": True})
    assert run.state == "success"
    sync_env.run("sync_contact")  # 10 rows visible is the baseline now
    with sync_env.state().connect() as conn:
        rows = conn.execute(text("SELECT rows FROM visible_rows WHERE entity='contact'")).scalar()
    assert rows == 10
