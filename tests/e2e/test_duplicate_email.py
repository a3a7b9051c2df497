"""Same email on two Dataverse persons: one live Marketo person and one report row (issue 22).

Before, two flagged leads with one email became two Marketo persons, silently. With the shipped
``duplicate_email: oldest_holds``, the record linked first (else the oldest of the batch) holds
the Marketo person, the other is a ``DUPLICATE_EMAIL`` record error naming the holder, and the
reconciliation counts it as reported, not missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import assert_reconciled, dyn_upsert, persons_with_email

pytestmark = pytest.mark.e2e


def _persons_with(env: SyncEnv, email: str) -> list[dict[str, Any]]:
    return persons_with_email(env, email, ["id", "email", "externalPersonId"])


def _reports(env: SyncEnv) -> list[tuple[str, str, str]]:
    with env.state().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT entity, source_id, message FROM record_error "
                "WHERE code = 'DUPLICATE_EMAIL' AND resolved_at IS NULL ORDER BY entity, source_id"
            )
        ).all()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def test_two_leads_with_one_email_give_one_person_and_one_report(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = sorted([new_guid(), new_guid()])  # same creation second: the GUID decides
    rows = [
        {"leadid": g, "lastname": f"Twin {g[:4]}", "emailaddress1": "twin@dup.test"} for g in (first, second)
    ]
    dyn_upsert(sync_env, "leads", "leadid", rows)

    sync_env.run("sync_lead")

    (person,) = _persons_with(sync_env, "twin@dup.test")
    assert person["externalPersonId"] == first
    ((entity, source, reason),) = _reports(sync_env)
    assert (entity, source) == ("lead", second)
    assert f"lead:{first}" in reason
    assert_reconciled(capsys)

    # The report stays one row, and no second person appears, however often the lead changes.
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": second, "jobtitle": "Changed"}])
    sync_env.run("sync_lead")
    assert len(_persons_with(sync_env, "twin@dup.test")) == 1
    assert len(_reports(sync_env)) == 1


def test_a_lead_and_a_contact_with_one_email_give_one_person_and_one_report(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lead, contact, other = new_guid(), new_guid(), new_guid()
    row = {"leadid": lead, "lastname": "Lee", "emailaddress1": "pat@dup.test"}
    dyn_upsert(sync_env, "leads", "leadid", [row])
    sync_env.run("sync_lead")
    contacts = [  # emails are compared trimmed and case-insensitively
        {"contactid": contact, "lastname": "Pat", "emailaddress1": "Pat@Dup.test"},
        {"contactid": other, "lastname": "Kim", "emailaddress1": "kim@dup.test"},
    ]
    dyn_upsert(sync_env, "contacts", "contactid", contacts)

    sync_env.run("sync_contact")

    (person,) = _persons_with(sync_env, "pat@dup.test")
    assert person["externalPersonId"] == lead, "the lead linked first keeps the person"
    ((entity, source, reason),) = _reports(sync_env)
    assert (entity, source) == ("contact", contact)
    assert f"lead:{lead}" in reason
    (kim,) = _persons_with(sync_env, "kim@dup.test")
    assert kim["externalPersonId"] == other, "a contact with an email of its own is synced as before"
    assert_reconciled(capsys)


def test_two_contacts_with_one_email_give_one_person_and_one_report(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The emulator seeds an alternate key on contact email; a real org need not have one.
    sync_env.dynamics.admin("POST", "schema", json={"entity": "contact", "drop_key": ["emailaddress1"]})
    first, second = sorted([new_guid(), new_guid()])
    rows = [
        {"contactid": g, "lastname": f"Twin {g[:4]}", "emailaddress1": "sam@dup.test"}
        for g in (first, second)
    ]
    dyn_upsert(sync_env, "contacts", "contactid", rows)

    sync_env.run("sync_contact")

    (person,) = _persons_with(sync_env, "sam@dup.test")
    assert person["externalPersonId"] == first
    ((entity, source, reason),) = _reports(sync_env)
    assert (entity, source) == ("contact", second)
    assert f"contact:{first}" in reason
    assert_reconciled(capsys)
