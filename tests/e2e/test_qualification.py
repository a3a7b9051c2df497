"""A Dynamics lead qualified into a contact: the four sync-filter cases of §6.2 (issue 22).

The lead is qualified with Dataverse's ``QualifyLead`` action on the emulator (the new contact's
``originatingleadid`` names the lead, the lead turns Qualified), then the DAGs run as scheduled:
``sync_contact`` first (it finds the contact), ``sync_lead`` after (it finds the Qualified lead).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import (
    assert_reconciled,
    dyn_get,
    dyn_upsert,
    mkto_update,
    persons_with_email,
    read_persons,
)

pytestmark = pytest.mark.e2e

FIELDS = ["id", "externalPersonId", "msdType", "email", "lastName", "title", "leadStatus"]
QUALIFY = "Microsoft.Dynamics.CRM.QualifyLead"


def _qualify(env: SyncEnv, lead: str) -> str:
    """Qualify ``lead`` into a contact (no account, no opportunity); returns the contact id."""
    hook = env.dyn()
    try:
        body = hook.call_json(
            "POST",
            f"leads({lead})/{QUALIFY}",
            json={"CreateAccount": False, "CreateContact": True, "CreateOpportunity": False, "Status": 3},
        )
    finally:
        hook.close()
    (contact,) = [r["contactid"] for r in body["value"] if "contactid" in r]
    return str(contact)


def _lead(env: SyncEnv, guid: str, email: str, synced: bool) -> None:
    row = {"leadid": guid, "firstname": "Quinn", "lastname": "Qualified", "emailaddress1": email}
    dyn_upsert(env, "leads", "leadid", [{**row, "new_synctomkto": synced}])


def _link_states(env: SyncEnv, *guids: str) -> dict[str, tuple[str, str, str | None]]:
    """(entity, state, Marketo id) of the id-map rows of these GUIDs."""
    with env.state().connect() as conn:
        rows = conn.execute(text("SELECT dynamics_id, entity, state, marketo_id FROM id_map")).all()
    return {str(r[0]): (str(r[1]), str(r[2]), r[3]) for r in rows if str(r[0]) in guids}


def _after_qualifying(
    env: SyncEnv, new_guid: Callable[[], str], email: str, lead_synced: bool, contact_synced: bool
) -> tuple[str, str]:
    lead = new_guid()
    _lead(env, lead, email, lead_synced)
    env.run("sync_lead")
    contact = _qualify(env, lead)
    dyn_upsert(env, "contacts", "contactid", [{"contactid": contact, "new_synctomkto": contact_synced}])
    env.run("sync_contact")
    env.run("sync_lead")
    return lead, contact


def test_both_synced_the_person_continues_as_the_contact(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lead = new_guid()
    _lead(sync_env, lead, "quinn@qualify.test", True)
    sync_env.run("sync_lead")
    (before,) = persons_with_email(sync_env, "quinn@qualify.test", FIELDS)
    assert (before["externalPersonId"], before["msdType"]) == (lead, "Lead")

    contact = _qualify(sync_env, lead)
    sync_env.run("sync_contact")
    sync_env.run("sync_lead")

    (person,) = persons_with_email(sync_env, "quinn@qualify.test", FIELDS)
    assert person["id"] == before["id"], "the same Marketo person, not a second one"
    assert (person["externalPersonId"], person["msdType"]) == (contact, "Contact")
    assert person["lastName"] == "Qualified"
    links = _link_states(sync_env, lead, contact)
    assert links[contact] == ("contact", "active", str(before["id"]))
    assert links[lead] == ("lead", "converted", str(before["id"])), "the lead's link is handed over"
    assert_reconciled(capsys)

    # The lead no longer writes to the person; the contact does, by the contact rule (Dynamics wins).
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": lead, "jobtitle": "Lead edit"}])
    dyn_upsert(sync_env, "contacts", "contactid", [{"contactid": contact, "lastname": "Dynamics"}])
    mkto_update(sync_env, [{"externalPersonId": contact, "lastName": "Marketo", "title": "Marketo title"}])
    sync_env.run("sync_lead")
    sync_env.run("sync_contact")
    (person,) = persons_with_email(sync_env, "quinn@qualify.test", FIELDS)
    assert person["lastName"] == "Dynamics", "Dynamics wins for contacts"
    assert person["title"] == "Marketo title", "the lead's later edit does not reach the person"
    row = dyn_get(sync_env, "contacts", "contactid", contact, ["lastname", "jobtitle"])
    assert (row["lastname"], row["jobtitle"]) == ("Dynamics", "Marketo title")
    assert_reconciled(capsys)


def test_lead_not_synced_contact_synced_gives_a_new_contact_person(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lead, contact = _after_qualifying(sync_env, new_guid, "nora@qualify.test", False, True)

    (person,) = persons_with_email(sync_env, "nora@qualify.test", FIELDS)
    assert (person["externalPersonId"], person["msdType"]) == (contact, "Contact")
    assert read_persons(sync_env, [lead], FIELDS) == []
    assert_reconciled(capsys)


def test_lead_synced_contact_not_synced_keeps_the_lead_person(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lead, contact = _after_qualifying(sync_env, new_guid, "lena@qualify.test", True, False)

    (person,) = persons_with_email(sync_env, "lena@qualify.test", FIELDS)
    assert (person["externalPersonId"], person["msdType"]) == (lead, "Lead")
    assert person["leadStatus"] == "Qualified", "the lead's data keeps updating the person"
    assert read_persons(sync_env, [contact], FIELDS) == []
    assert _link_states(sync_env, lead)[lead][1] == "active"
    assert_reconciled(capsys)


def test_neither_synced_syncs_nothing(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lead, contact = _after_qualifying(sync_env, new_guid, "nils@qualify.test", False, False)

    assert persons_with_email(sync_env, "nils@qualify.test", FIELDS) == []
    assert _link_states(sync_env, lead, contact) == {}
    assert_reconciled(capsys)
