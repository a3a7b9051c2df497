"""``sync_activities`` and ``sync_activities_history`` end to end (issue 20): Marketo activities
of the mapped types land on the synced lead's or contact's Dynamics timeline, exactly once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.e2e.activities_support import (
    CLICK,
    DELIVERED,
    FORM,
    MOMENT,
    OPEN,
    SEND,
    VISIT,
    activity_rows,
    add_activities,
    marketo_ids,
    run_activities,
    timeline,
)
from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import dyn_upsert

pytestmark = pytest.mark.e2e


def _open_waits(env: SyncEnv) -> list[tuple[str, str]]:
    with env.state().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT source_id, message FROM record_error WHERE entity = 'activity' "
                "AND code = 'PERSON_NOT_SYNCED' AND resolved_at IS NULL ORDER BY source_id"
            )
        ).all()
    return [(str(a), str(m)) for a, m in rows]


def test_mapped_activities_land_once_on_the_right_timeline_and_unsynced_persons_wait(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    lead, contact = new_guid(), new_guid()
    dyn_upsert(
        sync_env, "leads", "leadid", [{"leadid": lead, "lastname": "Lead", "emailaddress1": "l@x.test"}]
    )
    dyn_upsert(sync_env, "contacts", "contactid", [{"contactid": contact, "lastname": "Contact"}])
    mkto = sync_env.mkto()
    try:  # a Marketo person not (yet) flagged for Dynamics
        (quiet,) = mkto.sync_leads([{"lastName": "Quiet", "email": "q@x.test"}], action="createOnly")
    finally:
        mkto.close()
    quiet_id = int(str(quiet.id))
    sync_env.run("sync_lead")
    sync_env.run("sync_contact")
    ids = marketo_ids(sync_env, [lead, contact])
    at = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mapped_lead = [(ids[lead], kind, at, f"L{kind}") for kind in (DELIVERED, OPEN, CLICK, FORM)]
    mapped_contact = [(ids[contact], kind, at, f"C{kind}") for kind in (VISIT, MOMENT)]
    add_activities(
        sync_env,
        [
            *mapped_lead,
            *mapped_contact,
            (ids[lead], SEND, at, "unmapped"),  # Send Email is not in activities.yaml
            (quiet_id, DELIVERED, at, "Q1"),
            (quiet_id, CLICK, at, "Q2"),
        ],
    )

    run_activities()

    on_lead, on_contact = timeline(sync_env, lead), timeline(sync_env, contact)
    assert sorted(r["subject"] for r in on_lead) == [
        "Email delivered: L7",
        "Email link clicked: L11",
        "Email opened: L10",
        "Form filled out: L2",
    ]
    assert sorted(r["subject"] for r in on_contact) == [
        "Interesting moment: moment C46",
        "Web page visited: C1",
    ]
    assert {r["activitytypecode"] for r in on_lead + on_contact} == {"new_marketoactivity"}
    assert len(activity_rows(sync_env)) == 6, "unmapped types and unsynced persons write nothing"
    waits = _open_waits(sync_env)
    assert len(waits) == 2
    assert all(f"Marketo lead {quiet_id} is not synced" in message for _, message in waits)

    sync_env.reset_stats()
    run_activities()  # a re-run: nothing new to write, the waiting ones still wait

    assert len(activity_rows(sync_env)) == 6
    assert sync_env.dynamics.stats()["records"].get("new_marketoactivity.write", 0) == 0
    assert len(_open_waits(sync_env)) == 2

    mkto = sync_env.mkto()
    try:  # the person is flagged, and the person sync creates its Dynamics lead
        results = mkto.sync_leads([{"id": quiet_id, "msdSyncToDynamics": True}], "updateOnly", "id")
        assert all(r.ok for r in results), results
    finally:
        mkto.close()
    sync_env.run("sync_lead")
    with sync_env.state().connect() as conn:
        quiet_guid = conn.execute(
            text("SELECT dynamics_id FROM id_map WHERE entity = 'lead' AND marketo_id = :m"),
            {"m": str(quiet_id)},
        ).scalar_one()

    run_activities()

    assert sorted(r["subject"] for r in timeline(sync_env, quiet_guid)) == [
        "Email delivered: Q1",
        "Email link clicked: Q2",
    ]
    assert len(activity_rows(sync_env)) == 8
    assert _open_waits(sync_env) == []
    with sync_env.state().connect() as conn:
        ledger = conn.execute(
            text(
                "SELECT status, loaded, skipped FROM run_ledger WHERE entity = 'activity' ORDER BY started_at"
            )
        ).all()
    assert [tuple(r) for r in ledger] == [("success", 6, 2), ("success", 0, 2), ("success", 2, 0)]


def test_a_backfill_of_three_months_writes_exactly_their_activities(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ACTIVITY_EXPORT_POLL_SECONDS", "0.5")
    lead = new_guid()
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": lead, "lastname": "History"}])
    sync_env.run("sync_lead")
    mid = marketo_ids(sync_env, [lead])[lead]
    inside = [
        "2025-04-01T00:00:00Z",
        "2025-04-15T09:00:00Z",
        "2025-05-02T10:00:00Z",
        "2025-05-20T11:00:00Z",
        "2025-05-31T23:00:00Z",
        "2025-06-10T12:00:00Z",
        "2025-06-30T23:59:59Z",
    ]
    outside = ["2025-03-31T23:59:59Z", "2025-02-11T08:00:00Z", "2025-07-01T00:00:00Z", "2025-08-05T08:00:00Z"]
    kinds = [DELIVERED, OPEN, CLICK, FORM, VISIT, MOMENT]
    add_activities(
        sync_env,
        [(mid, kinds[i % len(kinds)], when, f"in{i}") for i, when in enumerate(inside)]
        + [(mid, DELIVERED, when, f"out{i}") for i, when in enumerate(outside)]
        + [(mid, SEND, "2025-05-05T05:00:00Z", "unmapped")],
    )

    # What `airflow backfill create --from-date 2025-04-01 --to-date 2025-06-01` runs: one run per
    # monthly data interval of the history DAG's timetable. dag.test() takes the interval that
    # ends at the logical date it is given (the timetable's manual inference).
    for month in (4, 5, 6):
        run = run_activities("sync_activities_history", datetime(2025, month + 1, 1, tzinfo=UTC))
        assert (run.data_interval_start, run.data_interval_end) == (
            datetime(2025, month, 1, tzinfo=UTC),
            datetime(2025, month + 1, 1, tzinfo=UTC),
        )

    rows = activity_rows(sync_env)
    assert sorted(r["actualstart"] for r in rows) == sorted(inside)
    assert {r["new_marketoleadid"] for r in rows} == {mid}
    assert len(timeline(sync_env, lead)) == len(inside)
    stats = sync_env.marketo.stats()["calls"]
    assert stats["POST /bulk/v1/activities/export/create.json"] == 3, "one export job per month"


def test_with_the_budget_nearly_spent_activities_defer_and_the_person_sync_runs(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_sync.state import session_scope, upgrade
    from crm_sync.state.guards import add_api_calls

    # 100 calls a day, 20 kept for other integrations, 20 of the usable 80 for the entity syncs:
    # with 60 spent today, the low-priority activity sync has nothing it may take.
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MARKETO_DAILY_QUOTA", "100")
    monkeypatch.setenv("AIRFLOW_VAR_MDS_QUOTA_RESERVE_SHARE", "0.2")
    engine = sync_env.state()
    upgrade(engine)
    with session_scope(engine) as session:
        add_api_calls(session, run_id="earlier", entity="contact", stage="load", calls={"marketo": 60})
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": new_guid(), "lastname": "Urgent"}])
    sync_env.reset_stats()

    deferred = run_activities()
    states = {ti.task_id: str(ti.state) for ti in deferred.get_task_instances()}
    assert (states["extract"], states["commit"]) == ("skipped", "skipped")
    assert sync_env.marketo.stats()["calls"].get("GET /rest/v1/activities/types.json", 0) == 0
    sync_env.run("sync_lead")

    with engine.connect() as conn:
        ledger = conn.execute(
            text("SELECT entity, status, loaded, api_calls FROM run_ledger ORDER BY started_at")
        ).all()
        watermark = conn.execute(text("SELECT count(*) FROM watermark WHERE entity = 'activity'")).scalar()
    (activity, person) = [tuple(r) for r in ledger]
    assert activity == ("activity", "deferred", 0, 0)
    assert person[:3] == ("lead", "success", 1)
    assert 0 < person[3] <= 20, "the person sync ran inside the share kept for it"
    assert watermark == 0, "the deferred run read nothing and moved no watermark"
