"""Marketo → Dynamics failures are retried on later runs by re-reading the person by its id.

A person whose write into Dataverse failed has no new activity in Marketo's change feed, so
only the retry (due errors, re-read with ``get_leads("id", ...)``) can bring it back; it is
written once its backoff has expired, its error resolved, and a record that keeps failing is
parked after the retry policy's maximum number of attempts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from crm_sync.config import EntityConfig
from crm_sync.engine.columns import person_fields
from crm_sync.engine.commit import commit
from crm_sync.engine.context import RunContext
from crm_sync.engine.contracts import CommitSummary
from crm_sync.engine.extract import extract_changes
from crm_sync.engine.load import load_batch
from crm_sync.engine.transform import transform_changes
from crm_sync.state import RetryPolicy, session_scope
from tests.unit.engine.conftest import FakeDynamics, FakeMarketo

MakeCtx = Callable[[str], RunContext]


def _cycle(
    entity: EntityConfig,
    ctx: RunContext,
    dyn: FakeDynamics,
    mkto: FakeMarketo,
    fields: list[str],
    now: datetime,
) -> CommitSummary:
    extracted = extract_changes(entity, ctx, dynamics=dyn, marketo=mkto, feed_fields=fields, now=now)
    planned = transform_changes(entity, ctx, extracted)
    for batch in planned["batches"]:
        load_batch(entity, ctx, batch, marketo=mkto, dynamics=dyn)
    return commit(entity, ctx, extracted, planned, now=now)


def _errors(ctx: RunContext) -> list[Any]:
    with session_scope(ctx.state) as session:
        return list(
            session.execute(
                text(
                    "SELECT source_id, direction, attempts, parked, resolved_at IS NOT NULL AS resolved "
                    "FROM record_error ORDER BY source_id"
                )
            ).all()
        )


def test_a_failed_marketo_to_dynamics_write_is_retried_by_marketo_id_after_its_backoff(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    lead = entities["lead"]
    fields = person_fields(entities.values())
    dyn, mkto = FakeDynamics(), FakeMarketo()
    gid = str(uuid.uuid4())
    dyn.put("leads", {"leadid": gid, "lastname": "Lee"}, "leadid")
    start = datetime.now(UTC)
    _cycle(lead, make_ctx("r1"), dyn, mkto, fields, start)
    person = mkto.person("externalPersonId", gid)
    assert person is not None
    pid = int(person["id"])

    # A marketer edits the person; Dataverse refuses the write once.
    person["title"] = "CTO"
    mkto.activities.append(pid)
    dyn.fail[gid] = "0x80040237"
    counts = _cycle(lead, make_ctx("r2"), dyn, mkto, fields, start)
    assert counts.failed == 1
    assert [tuple(e) for e in _errors(make_ctx("x"))] == [(str(pid), "m2d", 1, False, False)]
    del dyn.fail[gid]  # the cause is fixed in Dataverse; the person does not change again

    reads = mkto.calls["get_leads"]
    _cycle(lead, make_ctx("r3"), dyn, mkto, fields, start + timedelta(minutes=1))
    assert dyn.tables["leads"][gid].get("jobtitle") is None, "still backing off"
    assert mkto.calls["get_leads"] == reads, "nothing re-read before the backoff expires"

    counts = _cycle(lead, make_ctx("r4"), dyn, mkto, fields, start + timedelta(hours=1))
    assert mkto.calls["get_leads"] == reads + 1, "the person was re-read by id"
    assert dyn.tables["leads"][gid]["jobtitle"] == "CTO"
    assert counts.loaded == 1
    ((_, _, _, parked, resolved),) = _errors(make_ctx("x"))
    assert (parked, resolved) == (False, True)

    writes = dyn.calls["upsert_records"]
    _cycle(lead, make_ctx("r5"), dyn, mkto, fields, start + timedelta(days=2))
    assert dyn.calls["upsert_records"] == writes, "a resolved error is not retried again"


def test_a_marketo_to_dynamics_failure_that_persists_is_parked_after_the_maximum_attempts(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    lead = entities["lead"]
    fields = person_fields(entities.values())
    dyn, mkto = FakeDynamics(), FakeMarketo()
    gid = str(uuid.uuid4())
    dyn.put("leads", {"leadid": gid, "lastname": "Lee"}, "leadid")
    start = datetime.now(UTC)
    _cycle(lead, make_ctx("p0"), dyn, mkto, fields, start)
    person = mkto.person("externalPersonId", gid)
    assert person is not None
    person["title"] = "Refused"
    mkto.activities.append(int(person["id"]))
    dyn.fail[gid] = "0x80040237"
    limit = RetryPolicy().max_attempts

    tries = []
    for run in range(1, limit + 3):  # every run two days apart: past any backoff
        before = dyn.calls.get("upsert_records", 0)
        _cycle(lead, make_ctx(f"p{run}"), dyn, mkto, fields, start + timedelta(days=2 * run))
        tries.append(dyn.calls.get("upsert_records", 0) - before)

    assert tries == [1] * limit + [0, 0], "one write per run until parked, none after"
    ((source, direction, attempts, parked, resolved),) = _errors(make_ctx("x"))
    assert (source, direction) == (str(person["id"]), "m2d")
    assert (attempts, parked, resolved) == (limit, True, False)


def test_an_invalid_marketo_value_fixed_without_a_feed_change_is_settled_on_retry(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    lead = entities["lead"]
    fields = person_fields(entities.values())
    dyn, mkto = FakeDynamics(), FakeMarketo()
    gid = str(uuid.uuid4())
    dyn.put("leads", {"leadid": gid, "lastname": "Lee"}, "leadid")
    start = datetime.now(UTC)
    _cycle(lead, make_ctx("v1"), dyn, mkto, fields, start)
    person = mkto.person("externalPersonId", gid)
    assert person is not None
    person["lastName"] = "L" * 60  # over Dataverse's 50 characters: an M→D error on lastName
    mkto.activities.append(int(person["id"]))
    _cycle(lead, make_ctx("v2"), dyn, mkto, fields, start)
    assert [tuple(e)[:2] for e in _errors(make_ctx("x"))] == [(str(person["id"]), "m2d")]
    assert dyn.tables["leads"][gid]["lastname"] == "Lee"

    person["lastName"] = "Lee-Fixed"  # corrected quietly (no activity in the feed)
    _cycle(lead, make_ctx("v3"), dyn, mkto, fields, start + timedelta(hours=1))

    assert dyn.tables["leads"][gid]["lastname"] == "Lee-Fixed"
    ((_, _, _, _, resolved),) = _errors(make_ctx("x"))
    assert resolved
