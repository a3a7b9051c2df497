"""Peeks against the real emulators: count what waits past the watermark, never move it.

After a first ``dag.test()`` run of ``sync_lead`` and ``sync_contact`` stored their watermarks,
changes are made on both sides; the peek functions and a whole watcher peek
(:class:`crm_sync.watch.peeker.Peeker`, as the triggerer runs it) see them, attribute each
Marketo person to the entity whose run will carry it, store the backlog and their calls, fire
once per new change, and leave every watermark where it was: the next run still carries the
changes, and the peek after it finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from crm_sync.config import load_entities
from crm_sync.engine.columns import person_fields
from crm_sync.engine.peek import peek_dynamics, peek_person_feed, split_person_changes
from crm_sync.state import get_watermark, session_scope
from crm_sync.state.backlog import backlog_rows
from crm_sync.watch.peeker import Peeker
from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import dyn_get, dyn_upsert, mkto_update

pytestmark = pytest.mark.e2e


def _watermarks(env: SyncEnv) -> dict[tuple[str, str], str | None]:
    with session_scope(env.state()) as s:
        return {(e, d): get_watermark(s, e, d) for e in ("lead", "contact") for d in ("d2m", "m2d")}


def test_peeks_see_what_waits_on_both_sides_and_move_no_watermark(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    ann, bob, cara = new_guid(), new_guid(), new_guid()
    dyn_upsert(
        sync_env, "leads", "leadid", [{"leadid": ann, "lastname": "Ann"}, {"leadid": bob, "lastname": "Bob"}]
    )
    dyn_upsert(sync_env, "contacts", "contactid", [{"contactid": cara, "lastname": "Cara"}])
    for _ in range(2):  # the second cycle moves both watermarks past the first one's own writes
        sync_env.run("sync_lead")
        sync_env.run("sync_contact")
    before = _watermarks(sync_env)
    entities = load_entities(sync_env.entities_dir)

    # Dynamics: two lead changes. Marketo: a lead's person and a contact's person.
    started = datetime.now(UTC) - timedelta(seconds=5)
    dyn_upsert(
        sync_env, "leads", "leadid", [{"leadid": ann, "jobtitle": "A"}, {"leadid": bob, "jobtitle": "B"}]
    )
    mkto_update(
        sync_env,
        [{"externalPersonId": ann, "title": "From-Marketo"}, {"externalPersonId": cara, "title": "Also"}],
    )

    dyn = sync_env.dyn()
    mkto = sync_env.mkto()
    try:
        delta = before[("lead", "d2m")]
        assert delta is not None
        seen = peek_dynamics(entities["lead"], dyn, delta)
        assert (seen.pending, seen.more) == (2, False)
        assert seen.oldest is not None  # the modified column is selected
        assert seen.oldest >= started
        token = before[("lead", "m2d")]
        assert token is not None
        feed = peek_person_feed(mkto, token, person_fields(entities.values()))
    finally:
        dyn.close()
        mkto.close()
    assert len(feed.changes) == 2
    assert not feed.more
    with session_scope(sync_env.state()) as s:
        split = split_person_changes(s, feed, ["lead", "contact"])
    assert (split["lead"].pending, split["contact"].pending) == (1, 1)

    # A whole watcher peek, as in the triggerer: backlog and calls stored, one event per news.
    dataverse, marketo = Peeker("dataverse", "lead"), Peeker("marketo")
    try:
        first = [dataverse.peek(), marketo.peek()]
        again = [dataverse.peek(), marketo.peek()]
    finally:
        dataverse.close()
        marketo.close()
    assert [o.fire for o in first] == [True, True]
    assert first[0].payload == {"source": "dataverse", "pending": {"lead": 2}, "more": False}
    assert first[1].payload == {"source": "marketo", "pending": {"lead": 1, "contact": 1}, "more": False}
    assert [o.fire for o in again] == [False, False], "nothing new since the last peek"
    assert all(o.wait > 0 for o in first + again)
    with session_scope(sync_env.state()) as s:
        backlog = {(r["entity"], r["direction"]): r["pending"] for r in backlog_rows(s) if r["pending"]}
        peeks: dict[str, int] = dict(
            s.execute(
                text("SELECT entity, SUM(calls) FROM api_call_log WHERE stage = 'peek' GROUP BY entity")
            ).all()
        )
    assert backlog == {("lead", "d2m"): 2, ("lead", "m2d"): 1, ("contact", "m2d"): 1}
    assert peeks == {"lead": 2, "person_feed": 2}, "one call per peek on each side"
    assert _watermarks(sync_env) == before, "a peek moves no watermark"

    # The runs still carry every change; afterwards the backlog is empty and peeks find nothing.
    sync_env.run("sync_lead")
    sync_env.run("sync_contact")
    assert dyn_get(sync_env, "leads", "leadid", ann, ["jobtitle"])["jobtitle"] == "From-Marketo"
    assert dyn_get(sync_env, "contacts", "contactid", cara, ["jobtitle"])["jobtitle"] == "Also"
    with session_scope(sync_env.state()) as s:
        assert {r["pending"] for r in backlog_rows(s)} == {0}
    dataverse = Peeker("dataverse", "lead")
    try:
        dataverse.peek()  # the lead run's own Marketo write comes back as its echo in Dataverse
        quiet = dataverse.peek()
    finally:
        dataverse.close()
    assert not quiet.fire
