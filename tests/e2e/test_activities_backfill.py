"""``airflow backfill create`` of ``sync_activities_history`` over three months writes exactly the
mapped activities of those months, each regarding the right lead or contact (issue 20).

A real Airflow (:func:`tests.e2e.backfill_support.standalone_airflow`: scheduler, DAG processor
and API server on their own SQLite metadata DB, 127.0.0.1 only) runs the backfill the CLI
creates: one run per monthly data interval, each one bulk activity export of its month. The
persons are synced first by ``dag.test()`` runs of the person DAGs. Marketo holds, besides the
activities of the window, activities just outside it (the last second before, the first second
after), an unmapped type inside it, and an activity inside it of a person not synced to Dynamics.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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
    add_activities,
    marketo_ids,
    timeline,
)
from tests.e2e.backfill_support import run_backfill, run_types, standalone_airflow
from tests.e2e.persons_support import dyn_upsert
from tests.support.slots import stack_marks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.conftest import SyncEnv

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    *stack_marks(minutes=3),  # standalone's start, then three monthly history runs
]

DAG_ID = "sync_activities_history"
INSIDE = [
    "2025-04-01T00:00:00Z",  # the window's first second
    "2025-04-15T09:00:00Z",
    "2025-05-02T10:00:00Z",
    "2025-05-20T11:00:00Z",
    "2025-05-31T23:00:00Z",
    "2025-06-10T12:00:00Z",
    "2025-06-30T23:59:59Z",  # its last second
]
OUTSIDE = ["2025-03-31T23:59:59Z", "2025-02-11T08:00:00Z", "2025-07-01T00:00:00Z", "2025-08-05T08:00:00Z"]
KINDS = [DELIVERED, OPEN, CLICK, FORM, VISIT, MOMENT]
COLUMNS = ["new_primaryattributevalue", "new_marketoleadid", "_regardingobjectid_value", "actualstart"]


def _written(env: SyncEnv) -> list[dict[str, Any]]:
    """Every row of the Marketo activity table, with what identifies it and whom it regards."""
    hook = env.dyn()
    try:
        pages = hook.query(
            "new_marketoactivities",
            select=COLUMNS,
        )
        return [r for page in pages for r in page]
    finally:
        hook.close()


def test_a_backfill_with_the_cli_writes_exactly_the_activities_of_its_three_months(
    sync_env: SyncEnv,
    new_guid: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    stack_slot_held: int,
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_ACTIVITY_EXPORT_POLL_SECONDS", "0.5")  # the task processes see it
    lead, contact = new_guid(), new_guid()
    person = {"leadid": lead, "lastname": "History", "emailaddress1": "h@x.test"}
    dyn_upsert(sync_env, "leads", "leadid", [person])
    dyn_upsert(sync_env, "contacts", "contactid", [{"contactid": contact, "lastname": "Customer"}])
    mkto = sync_env.mkto()
    try:  # a Marketo person not flagged for Dynamics: its activities wait, never land
        (quiet,) = mkto.sync_leads([{"lastName": "Quiet", "email": "q@x.test"}], action="createOnly")
    finally:
        mkto.close()
    sync_env.run("sync_lead")
    sync_env.run("sync_contact")
    ids = marketo_ids(sync_env, [lead, contact])
    persons = {ids[lead]: lead, ids[contact]: contact}
    expected: dict[str, tuple[int, str, str]] = {}  # primary value -> (Marketo lead, regarding, date)
    items: list[tuple[int, int, str, str]] = []
    for i, when in enumerate(INSIDE):
        for mid, tag in ((ids[lead], "L"), (ids[contact], "C")):
            primary = f"{tag}in{i}"
            items.append((mid, KINDS[i % len(KINDS)], when, primary))
            expected[primary] = (mid, persons[mid], when)
    items += [(ids[lead], DELIVERED, when, f"Lout{i}") for i, when in enumerate(OUTSIDE)]
    items += [(ids[contact], VISIT, when, f"Cout{i}") for i, when in enumerate(OUTSIDE)]
    items += [(ids[lead], SEND, "2025-05-05T05:00:00Z", "unmapped")]  # Send Email: not mapped
    items += [(int(str(quiet.id)), CLICK, "2025-05-06T06:00:00Z", "quiet")]
    add_activities(sync_env, items)
    sync_env.reset_stats()

    with standalone_airflow(tmp_path) as airflow:
        runs = run_backfill(airflow, DAG_ID, "2025-04-01", "2025-06-01", 3)
    assert [state for _, state, _, _ in runs] == ["success"] * 3, runs
    # Unpaused for the backfill, yet never scheduled a run of its own (BackfillOnlyCronTimetable).
    assert run_types(airflow.db, DAG_ID) == ["backfill"] * 3
    intervals = [(str(s)[:10], str(e)[:10]) for _, _, s, e in runs]
    assert intervals == [
        ("2025-04-01", "2025-05-01"),
        ("2025-05-01", "2025-06-01"),
        ("2025-06-01", "2025-07-01"),
    ]

    rows = _written(sync_env)
    got = {
        r["new_primaryattributevalue"]: (
            r["new_marketoleadid"],
            r["_regardingobjectid_value"],
            r["actualstart"],
        )
        for r in rows
    }
    assert len(rows) == len(got), "one row per activity"
    assert got == expected  # nothing outside the window, unmapped or of the unsynced person
    for guid in (lead, contact):  # each person's timeline holds its own activities only
        assert len(timeline(sync_env, guid)) == len(INSIDE)
    stats = sync_env.marketo.stats()["calls"]
    assert stats["POST /bulk/v1/activities/export/create.json"] == 3, "one export job per month"
    with sync_env.state().connect() as conn:
        waits = conn.execute(
            text(
                "SELECT message FROM record_error WHERE entity = 'activity' "
                "AND code = 'PERSON_NOT_SYNCED' AND resolved_at IS NULL"
            )
        ).all()
        ledger = conn.execute(
            text("SELECT run_id, status, loaded, skipped FROM run_ledger WHERE entity = 'activity'")
        ).all()
    assert [f"Marketo lead {quiet.id} is not synced" in str(m) for (m,) in waits] == [True]
    # Each month's run wrote that month's activities (two persons each) and only those; the
    # unsynced person's activity of May waits.
    month_of = {run_id: datetime.fromisoformat(str(start)).month for run_id, _, start, _ in runs}
    per_run = {str(run_id): (status, int(loaded), int(skipped)) for run_id, status, loaded, skipped in ledger}
    assert per_run == {
        run_id: ("success", 2 * sum(_month(w) == month for w in INSIDE), int(month == 5))
        for run_id, month in month_of.items()
    }


def _month(when: str) -> int:
    return datetime.fromisoformat(when.replace("Z", "+00:00")).astimezone(UTC).month
