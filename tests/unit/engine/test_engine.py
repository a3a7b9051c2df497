"""The engine's run cycle on a real state store and real staging, with in-memory API fakes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import text

from crm_sync.config import EntityConfig
from crm_sync.engine.columns import person_fields
from crm_sync.engine.commit import LoadIncompleteError, commit
from crm_sync.engine.context import RunContext
from crm_sync.engine.contracts import CommitSummary
from crm_sync.engine.extract import extract_changes
from crm_sync.engine.load import load_batch
from crm_sync.engine.transform import transform_changes
from crm_sync.state import get_watermark, session_scope
from tests.unit.engine.conftest import FakeDynamics, FakeMarketo

MakeCtx = Callable[[str], RunContext]


def cycle(
    entity: EntityConfig,
    ctx: RunContext,
    dyn: FakeDynamics,
    mkto: FakeMarketo,
    fields: list[str] | None = None,
    dedup: list[EntityConfig] | None = None,
    now: datetime | None = None,
) -> CommitSummary:
    """One run: extract, transform, load every batch, commit."""
    extracted = extract_changes(
        entity, ctx, dynamics=dyn, marketo=mkto, feed_fields=fields or [], dedup_tables=dedup or [], now=now
    )
    planned = transform_changes(entity, ctx, extracted)
    for batch in planned["batches"]:
        load_batch(entity, ctx, batch, marketo=mkto, dynamics=dyn)
    return commit(entity, ctx, extracted, planned, now=now)


def guid() -> str:
    return str(uuid.uuid4())


def test_account_cycle_creates_updates_and_then_sends_nothing(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    a, b = guid(), guid()
    dyn.put("accounts", {"accountid": a, "name": "Acme", "industrycode": 7}, "accountid")
    dyn.put("accounts", {"accountid": b, "name": "Off", "new_synctomkto": False}, "accountid")

    counts = cycle(account, make_ctx("run-1"), dyn, mkto)

    assert counts.extracted == 2
    assert counts.loaded == 1
    assert counts.skipped == 1
    assert mkto.objects["companies"][a]["company"] == "Acme"
    assert mkto.objects["companies"][a]["industry"] == "Consulting"
    assert b not in mkto.objects["companies"]

    dyn.put("accounts", {"accountid": a, "address1_city": "Oslo"}, "accountid")
    counts = cycle(account, make_ctx("run-2"), dyn, mkto)
    sent = mkto.objects["companies"][a]
    assert sent["billingCity"] == "Oslo"
    assert counts.loaded == 1

    writes = mkto.calls.get("sync_objects", 0)
    counts = cycle(account, make_ctx("run-3"), dyn, mkto)
    assert mkto.calls.get("sync_objects", 0) == writes, "nothing changed, nothing sent"
    assert (counts.extracted, counts.loaded) == (0, 0)


def test_unchanged_values_are_not_sent_again(entities: dict[str, EntityConfig], make_ctx: MakeCtx) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    a = guid()
    dyn.put("accounts", {"accountid": a, "name": "Acme"}, "accountid")
    cycle(account, make_ctx("run-1"), dyn, mkto)
    # Dataverse reports the row as changed (e.g. a column the sync does not map), values equal.
    dyn.put("accounts", {"accountid": a, "name": "Acme"}, "accountid")
    writes = mkto.calls["sync_objects"]

    counts = cycle(account, make_ctx("run-2"), dyn, mkto)

    assert mkto.calls["sync_objects"] == writes
    assert counts.skipped == 1


def test_a_retried_load_rewrites_the_same_staged_batch(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    a = guid()
    dyn.put("accounts", {"accountid": a, "name": "Acme"}, "accountid")
    ctx = make_ctx("run-1")
    extracted = extract_changes(account, ctx, dynamics=dyn, marketo=mkto)
    planned = transform_changes(account, ctx, extracted)
    (batch,) = planned["batches"]
    reads = dyn.calls["track_changes"]

    first = load_batch(account, ctx, batch, marketo=mkto)
    second = load_batch(account, ctx, batch, marketo=mkto)  # as after a task retry

    assert first == second
    assert dyn.calls["track_changes"] == reads, "the retry did not extract again"
    assert list(mkto.objects["companies"]) == [a], "an upsert by key, not a second record"
    with session_scope(ctx.state) as session:
        n = session.execute(text("SELECT count(*) FROM id_map WHERE entity='account'")).scalar()
    assert n == 1


def test_commit_refuses_until_every_batch_is_loaded(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    dyn.put("accounts", {"accountid": guid(), "name": "Acme"}, "accountid")
    ctx = make_ctx("run-1")
    extracted = extract_changes(account, ctx, dynamics=dyn)
    planned = transform_changes(account, ctx, extracted)

    with pytest.raises(LoadIncompleteError, match="batch-00000"):
        commit(account, ctx, extracted, planned)
    with session_scope(ctx.state) as session:
        assert get_watermark(session, "account", "d2m") is None

    load_batch(account, ctx, planned["batches"][0], marketo=mkto)
    commit(account, ctx, extracted, planned)
    with session_scope(ctx.state) as session:
        assert get_watermark(session, "account", "d2m") == extracted["pending"]["d2m"]


def test_an_expired_delta_link_rebaselines_only_the_differences(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    same, renamed, gone, added = guid(), guid(), guid(), guid()
    for key, name in ((same, "Same"), (renamed, "Old name"), (gone, "Gone")):
        dyn.put("accounts", {"accountid": key, "name": name}, "accountid")
    cycle(account, make_ctx("run-1"), dyn, mkto)
    with session_scope(make_ctx("x").state) as session:
        old_token = str(get_watermark(session, "account", "d2m"))
    dyn.expired.add(old_token)
    dyn.put("accounts", {"accountid": renamed, "name": "New name"}, "accountid")
    dyn.put("accounts", {"accountid": added, "name": "Added"}, "accountid")
    dyn.delete("accounts", gone)

    ctx = make_ctx("run-2")
    extracted = extract_changes(account, ctx, dynamics=dyn)

    part = extracted["dynamics"]
    assert part["rebaseline"] == {"read": 3, "unchanged": 1, "staged": 2, "deleted": 1}
    assert part["token"] != old_token
    staged = sorted(k for ref in part["batches"] for k in ctx.staging.read_frame(ref)["accountid"])
    assert staged == sorted([renamed, added])
    deleted = [k for ref in part["deleted"] for k in ctx.staging.read_frame(ref)["id"]]
    assert deleted == [gone]


def test_an_expired_delta_link_stops_when_most_rows_are_no_longer_visible(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    """A narrowed security role hides rows without an error: they must not be staged as deletes."""
    from crm_sync.guards.visibility import VisibilityCollapsed

    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    keys = [guid() for _ in range(40)]
    for i, key in enumerate(keys):
        dyn.put("accounts", {"accountid": key, "name": f"Co {i}"}, "accountid")
    cycle(account, make_ctx("run-1"), dyn, mkto)
    with session_scope(make_ctx("x").state) as session:
        dyn.expired.add(str(get_watermark(session, "account", "d2m")))
    for key in keys[10:]:  # hidden from the application user: gone from reads, never "deleted"
        dyn.tables["accounts"].pop(key)

    with pytest.raises(VisibilityCollapsed, match="sees 10 rows, the last full read saw 40"):
        extract_changes(account, make_ctx("run-2"), dynamics=dyn)
    with session_scope(make_ctx("x").state) as session:
        states = session.execute(text("SELECT DISTINCT state FROM id_map")).scalars().all()
    assert states == ["active"], "no link was touched"


def test_record_level_write_failures_are_recorded_and_do_not_block_the_watermark(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    good, bad = guid(), guid()
    dyn.put("accounts", {"accountid": good, "name": "Good"}, "accountid")
    dyn.put("accounts", {"accountid": bad, "name": "Bad"}, "accountid")
    mkto.fail[bad] = "1003"

    counts = cycle(account, make_ctx("run-1"), dyn, mkto)

    assert counts.loaded == 1
    assert counts.failed == 1
    ctx = make_ctx("check")
    with session_scope(ctx.state) as session:
        errors = session.execute(text("SELECT source_id, code, resolved_at FROM record_error")).all()
        linked = session.execute(text("SELECT dynamics_id FROM id_map")).scalars().all()
        assert get_watermark(session, "account", "d2m") is not None
    assert [(e.source_id, e.code, e.resolved_at) for e in errors] == [(bad, "1003", None)]
    assert linked == [good], "no link for a record that was not written"

    # The record changes again and now loads: its error is resolved.
    del mkto.fail[bad]
    dyn.put("accounts", {"accountid": bad, "name": "Bad, fixed"}, "accountid")
    cycle(account, make_ctx("run-2"), dyn, mkto)
    with session_scope(ctx.state) as session:
        resolved = session.execute(text("SELECT resolved_at FROM record_error")).scalar()
    assert resolved is not None


def _seed_person(mkto: FakeMarketo, **values: Any) -> int:
    pid = max(mkto.persons, default=0) + 1
    mkto.persons[pid] = {"id": pid, **values}
    mkto.activities.append(pid)
    return pid


def test_person_feed_parts_are_read_once_and_shared_by_lead_and_contact(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    lead, contact = entities["lead"], entities["contact"]
    fields = person_fields(entities.values())
    dyn, mkto = FakeDynamics(), FakeMarketo()
    lead_id, contact_id = guid(), guid()
    dyn.put("leads", {"leadid": lead_id, "lastname": "Lee"}, "leadid")
    dyn.put("contacts", {"contactid": contact_id, "lastname": "Cole"}, "contactid")
    cycle(lead, make_ctx("l1"), dyn, mkto, fields)
    cycle(contact, make_ctx("c1"), dyn, mkto, fields)
    # A marketer edits both persons.
    for pid, person in mkto.persons.items():
        person["title"] = "Edited"
        mkto.activities.append(pid)
    fetches = mkto.calls["get_leads"]

    cycle(lead, make_ctx("l2"), dyn, mkto, fields)
    cycle(contact, make_ctx("c2"), dyn, mkto, fields)

    assert mkto.calls["get_leads"] - fetches == 1, "the edited persons were fetched once for both DAGs"
    assert dyn.tables["leads"][lead_id]["jobtitle"] == "Edited"
    assert dyn.tables["contacts"][contact_id]["jobtitle"] == "Edited"


def test_an_unlinked_or_foreign_person_never_writes_to_dynamics(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    lead = entities["lead"]
    fields = person_fields(entities.values())
    dyn, mkto = FakeDynamics(), FakeMarketo()
    cycle(lead, make_ctx("l1"), dyn, mkto, fields)  # starts the feed
    _seed_person(mkto, externalPersonId=guid(), msdType="Lead", lastName="Foreign")

    cycle(lead, make_ctx("l2"), dyn, mkto, fields)

    assert dyn.calls.get("upsert_records", 0) == 0, "a person not in the id map is not ours to write"


def test_staged_person_rows_older_than_the_last_sync_are_ignored(entities: dict[str, EntityConfig]) -> None:
    from crm_sync.engine.plan import plan_changes

    lead = entities["lead"]
    gid = guid()
    links = pd.DataFrame(
        [
            {
                "entity": "lead",
                "dynamics_id": gid,
                "marketo_id": "7",
                "state": "active",
                "filter_value": None,
                "field_hashes": {},
                "updated_at": pd.Timestamp("2026-11-26T12:00:00Z"),
            }
        ]
    )
    row = {"id": 7, "externalPersonId": gid, "msdType": "Lead", "lastName": "Old", "_read_at": ""}
    stale = pd.DataFrame([{**row, "_read_at": "2026-11-26T11:59:00+00:00"}])
    fresh = pd.DataFrame([{**row, "_read_at": "2026-11-26T12:01:00+00:00"}])
    id_map = links[["entity", "dynamics_id", "marketo_id"]]

    assert plan_changes(lead, None, stale, links, id_map).ops.empty
    assert list(plan_changes(lead, None, fresh, links, id_map).ops["op"]) == ["dynamics_upsert"]


class _DiesAfterWriting(FakeMarketo):
    """Writes like Marketo, then the task dies before it can record anything."""

    def sync_objects(self, *args: Any, **kwargs: Any) -> Any:
        super().sync_objects(*args, **kwargs)
        raise KeyboardInterrupt("task killed mid-load")


def test_a_load_killed_after_writing_is_retried_without_duplicates(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, dying = FakeDynamics(), _DiesAfterWriting()
    ids = [guid() for _ in range(3)]
    for i, a in enumerate(ids):
        dyn.put("accounts", {"accountid": a, "name": f"Company {i}"}, "accountid")
    ctx = make_ctx("run-1")
    extracted = extract_changes(account, ctx, dynamics=dyn)
    planned = transform_changes(account, ctx, extracted)
    (batch,) = planned["batches"]
    with pytest.raises(KeyboardInterrupt):
        load_batch(account, ctx, batch, marketo=dying)
    with pytest.raises(LoadIncompleteError):
        commit(account, ctx, extracted, planned)

    healthy = FakeMarketo(objects=dying.objects)  # the retry, in a fresh worker
    load_batch(account, ctx, batch, marketo=healthy)
    commit(account, ctx, extracted, planned)

    assert sorted(healthy.objects["companies"]) == sorted(ids)
    assert [c["company"] for c in healthy.objects["companies"].values()].count("Company 0") == 1
    with session_scope(ctx.state) as session:
        assert session.execute(text("SELECT count(*) FROM id_map")).scalar() == 3


def test_flagged_marketo_persons_are_linked_created_or_reported_as_duplicates(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    from crm_sync.engine.new_persons import new_person_guid

    lead, contact = entities["lead"], entities["contact"]
    fields, dedup = person_fields(entities.values()), [lead, contact]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    known, twin_a, twin_b, synced = guid(), guid(), guid(), guid()
    dyn.put("leads", {"leadid": twin_a, "lastname": "Twin", "emailaddress1": "twin@example.com"}, "leadid")
    for cid, name, email in ((twin_b, "Twin", "twin"), (synced, "Synced", "syn")):
        dyn.put(
            "contacts",
            {"contactid": cid, "lastname": name, "emailaddress1": f"{email}@example.com"},
            "contactid",
        )
    cycle(lead, make_ctx("l1"), dyn, mkto, fields, dedup)
    cycle(contact, make_ctx("c0"), dyn, mkto, fields, dedup)  # the contacts now have persons
    # A contact created since, not in Marketo yet.
    dyn.put(
        "contacts",
        {"contactid": known, "lastname": "Known", "emailaddress1": "known@example.com"},
        "contactid",
    )
    flag = lead.marketo.sync_flag_field
    assert flag is not None
    new_id = _seed_person(mkto, lastName="New", email="new@example.com", **{flag: True})
    link_id = _seed_person(mkto, lastName="Known-M", email="KNOWN@example.com", **{flag: True})
    dup_id = _seed_person(mkto, lastName="Twin", email="twin@example.com", **{flag: True})
    taken_id = _seed_person(mkto, lastName="Copy", email="syn@example.com", **{flag: True})
    _seed_person(mkto, lastName="Unflagged", email="quiet@example.com")

    cycle(lead, make_ctx("l2"), dyn, mkto, fields, dedup)

    created = new_person_guid(str(new_id))
    assert dyn.tables["leads"][created]["lastname"] == "New"
    assert mkto.persons[new_id]["externalPersonId"] == created
    assert mkto.persons[new_id]["msdType"] == "Lead"
    assert mkto.persons[link_id]["externalPersonId"] == known, "one email match links instead of creating"
    assert mkto.persons[link_id]["msdType"] == "Contact"
    assert "externalPersonId" not in mkto.persons[dup_id], "several matches are never guessed"
    assert len(dyn.tables["leads"]) == 2, "only the new person became a lead"
    assert len(dyn.tables["contacts"]) == 3
    ctx = make_ctx("check")
    with session_scope(ctx.state) as session:
        links = session.execute(
            text("SELECT entity, dynamics_id, marketo_id FROM id_map ORDER BY entity")
        ).all()
        errors = session.execute(text("SELECT source_id, field, code, message FROM record_error")).all()
    assert ("contact", known, str(link_id)) in [tuple(r) for r in links]
    assert ("lead", created, str(new_id)) in [tuple(r) for r in links]
    by_code = {e.code: e for e in errors}
    # The twin contact shares the twin lead's email: it holds no person of its own (reported).
    assert sorted(by_code) == ["ALREADY_LINKED", "DUPLICATE_CANDIDATES", "DUPLICATE_EMAIL"]
    assert (by_code["DUPLICATE_EMAIL"].source_id, by_code["DUPLICATE_EMAIL"].field) == (
        twin_b,
        "emailaddress1",
    )
    assert f"lead:{twin_a}" in by_code["DUPLICATE_EMAIL"].message
    duplicate = by_code["DUPLICATE_CANDIDATES"]
    assert (duplicate.source_id, duplicate.field) == (str(dup_id), "email")
    assert twin_a in duplicate.message
    assert twin_b in duplicate.message
    assert by_code["ALREADY_LINKED"].source_id == str(taken_id)
    assert "externalPersonId" not in mkto.persons[taken_id], "an existing person is never re-pointed"

    # The next run sees the created lead and the linked person echo back: nothing is written.
    lead_writes, person_writes = dyn.calls["upsert_records"], mkto.calls["sync_leads"]
    cycle(lead, make_ctx("l3"), dyn, mkto, fields, dedup)
    assert dyn.calls["upsert_records"] == lead_writes
    assert new_person_guid(str(new_id)) in dyn.tables["leads"]
    assert mkto.calls["sync_leads"] - person_writes <= 1, "at most the one-time d2m completion"

    # The contact DAG's first merge of the email-linked person sees both sides: Dynamics wins.
    cycle(contact, make_ctx("c1"), dyn, mkto, fields, dedup)
    assert dyn.tables["contacts"][known]["lastname"] == "Known"
    assert mkto.persons[link_id]["lastName"] == "Known"
    with session_scope(ctx.state) as session:
        logged = session.execute(text("SELECT entity, field, winner FROM conflict_log")).all()
    assert ("contact", "lastName", "dynamics") in [tuple(r) for r in logged]


def test_failed_records_are_retried_after_their_backoff_without_a_new_change(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    account = entities["account"]
    dyn, mkto = FakeDynamics(), FakeMarketo()
    bad = guid()
    dyn.put("accounts", {"accountid": bad, "name": "Refused"}, "accountid")
    mkto.fail[bad] = "1003"
    start = datetime.now(UTC)
    cycle(account, make_ctx("run-1"), dyn, mkto, now=start)
    del mkto.fail[bad]  # the cause is fixed in Marketo; the record itself does not change

    cycle(account, make_ctx("run-2"), dyn, mkto, now=start + timedelta(minutes=1))
    assert bad not in mkto.objects.get("companies", {}), "still backing off"

    counts = cycle(account, make_ctx("run-3"), dyn, mkto, now=start + timedelta(hours=1))
    assert mkto.objects["companies"][bad]["company"] == "Refused"
    assert counts.loaded == 1
    with session_scope(make_ctx("x").state) as session:
        assert session.execute(text("SELECT resolved_at IS NOT NULL FROM record_error")).scalar() == 1


def test_a_create_whose_answer_was_lost_updates_the_row_it_made(
    entities: dict[str, EntityConfig], make_ctx: MakeCtx
) -> None:
    """Creates carry If-None-Match: *; the derived GUID's row already there is this same create,
    sent by an earlier attempt of the load whose answer was lost: it is updated, not refused."""
    from crm_sync.engine.new_persons import new_person_guid

    lead = entities["lead"]
    fields = person_fields(entities.values())
    dyn, mkto = FakeDynamics(), FakeMarketo()
    cycle(lead, make_ctx("l0"), dyn, mkto, fields, [lead])
    flag = lead.marketo.sync_flag_field
    assert flag is not None
    new_id = _seed_person(mkto, lastName="New", email="new@example.com", **{flag: True})
    created = new_person_guid(str(new_id))

    ctx = make_ctx("l1")
    extracted = extract_changes(
        lead, ctx, dynamics=dyn, marketo=mkto, feed_fields=fields, dedup_tables=[lead]
    )
    planned = transform_changes(lead, ctx, extracted)
    dyn.put("leads", {"leadid": created, "lastname": "Sent before"}, "leadid")  # the lost attempt
    for batch in planned["batches"]:
        load_batch(lead, ctx, batch, marketo=mkto, dynamics=dyn)
    commit(lead, ctx, extracted, planned)

    assert dyn.tables["leads"][created]["lastname"] == "New", "the row now holds the person's values"
    assert len(dyn.tables["leads"]) == 1
    assert mkto.persons[new_id]["externalPersonId"] == created
    with session_scope(make_ctx("check").state) as session:
        links = session.execute(text("SELECT dynamics_id, marketo_id FROM id_map")).all()
        errors = session.execute(text("SELECT count(*) FROM record_error")).scalar()
    assert [tuple(r) for r in links] == [(created, str(new_id))]
    assert errors == 0
