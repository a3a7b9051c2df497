"""``sync_lead`` and ``sync_contact`` end to end: both ways, echo, conflicts, deletes, bad records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv, read_calls, write_calls
from tests.e2e.persons_support import dyn_get, dyn_upsert, mkto_update, read_persons

pytestmark = pytest.mark.e2e

PERSON_FIELDS = [
    "id",
    "externalPersonId",
    "msdType",
    "msdIsDeleted",
    "firstName",
    "lastName",
    "title",
    "email",
]


def _persons(env: SyncEnv, guids: list[str]) -> dict[str, dict[str, Any]]:
    return {r["externalPersonId"]: r for r in read_persons(env, guids, PERSON_FIELDS)}


def _quiet_run(env: SyncEnv, dag_id: str) -> None:
    """A run that must write nothing on either side and read at most twice per side."""
    env.reset_stats()
    env.run(dag_id)
    m_stats, d_stats = env.marketo.stats(), env.dynamics.stats()
    assert write_calls(m_stats) == {}, f"{dag_id} wrote to Marketo"
    assert write_calls(d_stats) == {}, f"{dag_id} wrote to Dynamics"
    m_calls: dict[str, int] = m_stats["calls"]
    # With nothing written, the ?_method=GET lead reads are the only POSTs to leads.json.
    assert read_calls(m_stats) + m_calls.get("POST /rest/v1/leads.json", 0) <= 2
    assert read_calls(d_stats) <= 2


def test_lead_both_ways_without_echo_and_marketo_wins_conflicts(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    ann, kim = new_guid(), new_guid()
    dyn_upsert(
        sync_env,
        "leads",
        "leadid",
        [
            {"leadid": ann, "firstname": "Ann", "lastname": "Lee", "emailaddress1": "ann@example.com"},
            {"leadid": kim, "lastname": "Kim", "jobtitle": "Buyer", "leadsourcecode": 8},
        ],
    )
    sync_env.run("sync_lead")
    persons = _persons(sync_env, [ann, kim])
    assert persons[ann]["lastName"] == "Lee"
    assert persons[ann]["msdType"] == "Lead"
    assert persons[kim]["title"] == "Buyer"

    # Marketo -> Dynamics: a marketer edits a linked person.
    mkto_update(sync_env, [{"externalPersonId": ann, "title": "CTO"}])
    sync_env.reset_stats()
    sync_env.run("sync_lead")
    assert dyn_get(sync_env, "leads", "leadid", ann, ["jobtitle"])["jobtitle"] == "CTO"
    assert sync_env.marketo.stats()["records"].get("lead.write", 0) == 0, "no echo back to Marketo"

    # The value the sync wrote into Dynamics comes back as a Dynamics change: not an echo write.
    _quiet_run(sync_env, "sync_lead")
    _quiet_run(sync_env, "sync_lead")

    # Conflict: both sides change Kim's last name; Marketo wins for leads, on both sides.
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": kim, "lastname": "Kim-Dynamics"}])
    mkto_update(sync_env, [{"externalPersonId": kim, "lastName": "Kim-Marketo"}])
    sync_env.run("sync_lead")
    assert dyn_get(sync_env, "leads", "leadid", kim, ["lastname"])["lastname"] == "Kim-Marketo"
    assert _persons(sync_env, [kim])[kim]["lastName"] == "Kim-Marketo"
    with sync_env.state().connect() as conn:
        conflicts = conn.execute(
            text("SELECT record_key, field, marketo_value, dynamics_value, winner FROM conflict_log")
        ).all()
    assert [tuple(c) for c in conflicts] == [(kim, "lastName", "Kim-Marketo", "Kim-Dynamics", "marketo")]
    _quiet_run(sync_env, "sync_lead")


def test_contact_dynamics_wins_and_the_person_feed_is_read_once_per_cycle(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    cara, lee = new_guid(), new_guid()
    dyn_upsert(sync_env, "contacts", "contactid", [{"contactid": cara, "lastname": "Cara"}])
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": lee, "lastname": "Lee"}])
    sync_env.run("sync_contact")
    sync_env.run("sync_lead")
    persons = _persons(sync_env, [cara, lee])
    assert persons[cara]["msdType"] == "Contact"
    assert persons[lee]["msdType"] == "Lead"

    dyn_upsert(sync_env, "contacts", "contactid", [{"contactid": cara, "lastname": "Cara-Dynamics"}])
    mkto_update(sync_env, [{"externalPersonId": cara, "lastName": "Cara-Marketo", "title": "VP"}])
    mkto_update(sync_env, [{"externalPersonId": lee, "title": "Analyst"}])
    sync_env.reset_stats()
    sync_env.run("sync_contact")  # reads the feed up to now and stages what it read
    after_contact: dict[str, int] = dict(sync_env.marketo.stats()["records"])
    sync_env.run("sync_lead")  # reuses the staged part; only polls the (empty) tail
    after_lead: dict[str, int] = dict(sync_env.marketo.stats()["records"])
    assert after_contact["lead.read"] >= 2, "both edited persons were fetched by the contact run"
    # The lead run fetches only what changed after the contact run read the feed: the one
    # person the contact run itself wrote (Cara). Lee's edit, read before, is not fetched again.
    assert after_lead["lead.read"] - after_contact["lead.read"] == 1

    contact = dyn_get(sync_env, "contacts", "contactid", cara, ["lastname", "jobtitle"])
    assert contact["lastname"] == "Cara-Dynamics", "Dynamics wins for contacts"
    assert contact["jobtitle"] == "VP", "a field changed only in Marketo still flows back"
    assert _persons(sync_env, [cara])[cara]["lastName"] == "Cara-Dynamics"
    assert dyn_get(sync_env, "leads", "leadid", lee, ["jobtitle"])["jobtitle"] == "Analyst"
    with sync_env.state().connect() as conn:
        winners = conn.execute(text("SELECT entity, field, winner FROM conflict_log")).all()
    assert [tuple(w) for w in winners] == [("contact", "lastName", "dynamics")]
    _quiet_run(sync_env, "sync_contact")
    _quiet_run(sync_env, "sync_lead")


def test_invalid_records_land_in_record_error_while_the_batch_loads(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    good, long_name, bad_email = new_guid(), new_guid(), new_guid()
    dyn_upsert(
        sync_env,
        "leads",
        "leadid",
        [
            {"leadid": good, "lastname": "Good", "emailaddress1": "good@example.com"},
            {"leadid": long_name, "lastname": "L" * 300},
            {"leadid": bad_email, "lastname": "Mail", "emailaddress1": "not-an-email"},
        ],
    )
    sync_env.run("sync_lead")

    assert set(_persons(sync_env, [good, long_name, bad_email])) == {good}
    with sync_env.state().connect() as conn:
        errors = conn.execute(
            text("SELECT source_id, field, code, message, attempts FROM record_error ORDER BY code")
        ).all()
        ledger = conn.execute(text("SELECT extracted, loaded, failed FROM run_ledger")).one()
    assert [(e.source_id, e.field, e.code) for e in errors] == [
        (long_name, "lastname", "FIELD_LENGTH"),
        (bad_email, "emailaddress1", "INVALID_EMAIL"),
    ]
    assert "300 > 50" in errors[0].message
    assert "L" * 20 not in errors[0].message, "reasons never quote the value"
    assert tuple(ledger) == (3, 1, 2)


def test_lead_deleted_in_dynamics_is_flagged_in_marketo_and_filter_switches(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    gone, paused = new_guid(), new_guid()
    dyn_upsert(
        sync_env,
        "leads",
        "leadid",
        [{"leadid": gone, "lastname": "Gone"}, {"leadid": paused, "lastname": "Paused", "jobtitle": "A"}],
    )
    sync_env.run("sync_lead")
    hook = sync_env.dyn()
    try:
        assert all(r.ok for r in hook.delete_records("leads", [gone]))
    finally:
        hook.close()
    # Sync filter Yes -> No: later changes stop flowing, nothing is deleted.
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": paused, "new_synctomkto": False, "jobtitle": "B"}])
    sync_env.run("sync_lead")

    persons = _persons(sync_env, [gone, paused])
    assert persons[gone]["msdIsDeleted"] is True, "a Dynamics delete only flags the person"
    assert persons[paused]["title"] == "A"
    with sync_env.state().connect() as conn:
        rows = conn.execute(text("SELECT dynamics_id, state FROM id_map WHERE entity='lead'")).all()
    states: dict[str, str] = {str(k): str(v) for k, v in rows}
    assert states == {gone: "deleted", paused: "stale"}

    # No -> Yes: the record is sent in full again.
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": paused, "new_synctomkto": True}])
    sync_env.run("sync_lead")
    assert _persons(sync_env, [paused])[paused]["title"] == "B"


def test_flagged_marketo_only_persons_create_link_or_report_duplicates(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    from crm_sync.engine.new_persons import new_person_guid

    twin_a, twin_b, known = new_guid(), new_guid(), new_guid()
    twins = [{"leadid": g, "lastname": "Twin", "emailaddress1": "twin@example.com"} for g in (twin_a, twin_b)]
    dyn_upsert(sync_env, "leads", "leadid", twins)
    sync_env.run("sync_lead")
    sync_env.run("sync_contact")
    # Created since the contact DAG's last run: no Marketo person yet.
    dyn_upsert(
        sync_env,
        "contacts",
        "contactid",
        [{"contactid": known, "lastname": "Known", "emailaddress1": "known@example.com"}],
    )
    mkto = sync_env.mkto()
    try:
        new_people: list[dict[str, Any]] = [
            {"lastName": "New", "email": "new@example.com", "msdSyncToDynamics": True},
            {"lastName": "Known-M", "email": "known@example.com", "msdSyncToDynamics": True},
            {"lastName": "Twin", "email": "twin@example.com", "msdSyncToDynamics": True},
            {"lastName": "Quiet", "email": "quiet@example.com"},
        ]
        results = mkto.sync_leads(new_people, action="createDuplicate")
        assert all(r.ok for r in results), results
        new_id, link_id, dup_id, quiet_id = (int(str(r.id)) for r in results)
    finally:
        mkto.close()

    sync_env.run("sync_lead")
    sync_env.run("sync_contact")

    created = new_person_guid(str(new_id))
    lead = dyn_get(sync_env, "leads", "leadid", created, ["lastname", "emailaddress1"])
    assert (lead["lastname"], lead["emailaddress1"]) == ("New", "new@example.com")
    mkto = sync_env.mkto()
    try:
        fields = ["id", "externalPersonId", "msdType", "lastName"]
        pages = mkto.get_leads("id", [new_id, link_id, dup_id, quiet_id], fields)
        by_id = {p["id"]: p for page in pages for p in page}
        pages = mkto.get_leads("externalPersonId", [known], fields)
        for_known = [p for page in pages for p in page]
    finally:
        mkto.close()
    assert (by_id[new_id]["externalPersonId"], by_id[new_id]["msdType"]) == (created, "Lead")
    assert (by_id[link_id]["externalPersonId"], by_id[link_id]["msdType"]) == (known, "Contact")
    assert [p["id"] for p in for_known] == [link_id], "the contact got no second Marketo person"
    assert by_id[link_id]["lastName"] == "Known", "first merge after the link: Dynamics wins for contacts"
    assert by_id[dup_id].get("externalPersonId") is None, "several matches are never guessed"
    assert by_id[quiet_id].get("externalPersonId") is None, "unflagged persons stay in Marketo"
    with sync_env.state().connect() as conn:
        errors = conn.execute(
            text("SELECT source_id, field, code, message FROM record_error ORDER BY code")
        ).all()
    # The two twin leads share an email: the second one holds no person of its own (reported),
    # and the Marketo person with that email matches both, so it is never guessed.
    first = errors[0]
    assert (first.source_id, first.field, first.code) == (str(dup_id), "email", "DUPLICATE_CANDIDATES")
    assert twin_a in errors[0].message
    assert twin_b in errors[0].message
    ((held, field, code),) = [(e.source_id, e.field, e.code) for e in errors[1:]]
    assert (field, code) == ("emailaddress1", "DUPLICATE_EMAIL")
    assert held in (twin_a, twin_b)
    assert f"lead:{({twin_a, twin_b} - {held}).pop()}" in errors[1].message
