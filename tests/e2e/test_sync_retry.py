"""A Marketo person that failed to reach Dynamics is retried on a later run without a new change.

The flagged Marketo-only person has an email two Dataverse leads share (leads the sync filter
keeps out of Marketo, so neither has a person yet), so the run reports duplicate candidates
instead of guessing (an M→D record error keyed by the Marketo id). The
duplicate is then cleaned up in Dynamics only: the person itself never changes again, so the
change feed never brings it back. Once its backoff has expired, the next ``sync_lead`` run
re-reads it by Marketo id, links it to the one remaining lead and resolves the error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from tests.e2e.conftest import SyncEnv

pytestmark = pytest.mark.e2e

TWIN_EMAIL = "twin.retry@example.com"


def _upsert_leads(env: SyncEnv, rows: list[dict[str, Any]]) -> None:
    hook = env.dyn()
    try:
        results = hook.upsert_records("leads", rows, ["leadid"], id_column="leadid")
        assert all(r.ok for r in results), results
    finally:
        hook.close()


def _person(env: SyncEnv, pid: int) -> dict[str, Any]:
    hook = env.mkto()
    try:
        pages = hook.get_leads("id", [pid], ["id", "externalPersonId", "msdType", "email"])
        (person,) = [p for page in pages for p in page]
        return person
    finally:
        hook.close()


def _errors(env: SyncEnv) -> list[Any]:
    with env.state().connect() as conn:
        return list(
            conn.execute(
                text("SELECT source_id, direction, code, attempts, parked, resolved_at FROM record_error")
            ).all()
        )


def _expire_backoff(env: SyncEnv) -> None:
    """Move every retry time into the past: the time the 5-minute backoff would take to pass."""
    from crm_sync.state.models import RecordError

    engine = env.state()
    with Session(engine) as session, session.begin():
        session.execute(update(RecordError).values(next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC)))
    engine.dispose()


def test_a_failed_marketo_person_is_reread_by_id_and_linked_once_the_cause_is_fixed(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    twin_a, twin_b = new_guid(), new_guid()
    twins = [
        {"leadid": g, "lastname": "Twin", "emailaddress1": TWIN_EMAIL, "new_synctomkto": False}
        for g in (twin_a, twin_b)
    ]
    _upsert_leads(sync_env, twins)
    sync_env.run("sync_lead")  # starts the person feed
    mkto = sync_env.mkto()
    try:
        flagged = {"lastName": "Twin", "email": TWIN_EMAIL, "msdSyncToDynamics": True}
        (result,) = mkto.sync_leads([flagged], action="createDuplicate")
        assert result.ok, result
        pid = int(str(result.id))
    finally:
        mkto.close()

    sync_env.run("sync_lead")
    ((source, direction, code, attempts, parked, resolved),) = _errors(sync_env)
    assert (source, direction, code, attempts, parked, resolved) == (
        str(pid),
        "m2d",
        "DUPLICATE_CANDIDATES",
        1,
        False,
        None,
    )
    assert _person(sync_env, pid).get("externalPersonId") is None

    # Fixed in Dynamics only; the Marketo person has no new activity.
    _upsert_leads(sync_env, [{"leadid": twin_b, "emailaddress1": "twin.b@example.com"}])
    sync_env.run("sync_lead")
    assert _person(sync_env, pid).get("externalPersonId") is None, "not retried before its backoff"
    assert [tuple(e)[3] for e in _errors(sync_env)] == [1]

    _expire_backoff(sync_env)
    sync_env.reset_stats()
    sync_env.run("sync_lead")

    person = _person(sync_env, pid)
    assert (person.get("externalPersonId"), person.get("msdType")) == (twin_a, "Lead"), "linked by the retry"
    ((source, _, _, attempts, parked, resolved),) = _errors(sync_env)
    assert (source, parked) == (str(pid), False)
    assert resolved is not None, "the error is resolved by the successful retry"
    assert attempts == 2, "the retry counted as the second attempt"
    with sync_env.state().connect() as conn:
        links = conn.execute(text("SELECT entity, dynamics_id, marketo_id FROM id_map")).all()
    assert ("lead", twin_a, str(pid)) in [tuple(r) for r in links]
    calls: dict[str, int] = sync_env.marketo.stats()["calls"]
    assert calls.get("POST /rest/v1/leads.json", 0) >= 2, "the person was read by id, then linked"
