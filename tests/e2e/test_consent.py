"""Consent through ``sync_contact`` and ``sync_lead``: an opt-out on either side always wins, and a
re-subscribe is carried across only from the consent owner's side (Marketo in the shipped YAML).

The defect this guards against: a person unsubscribed in Marketo reached Dataverse as
``donotbulkemail = true``; someone set it back to false in Dataverse, and the next run wrote
``unsubscribed`` 1 → 0 into Marketo, re-subscribing a person who had opted out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv, write_calls
from tests.e2e.persons_support import assert_reconciled, dyn_get, dyn_upsert, mkto_update, read_persons

pytestmark = pytest.mark.e2e

FIELDS = ["id", "externalPersonId", "msdType", "email", "lastName", "unsubscribed"]


def _person(env: SyncEnv, guid: str) -> dict[str, Any]:
    (person,) = read_persons(env, [guid], FIELDS)
    return person


def _mkto_set(env: SyncEnv, guid: str, **values: Any) -> None:
    mkto_update(env, [{"externalPersonId": guid, **values}])


def _dyn_set(env: SyncEnv, entity_set: str, key: str, guid: str, **values: Any) -> None:
    dyn_upsert(env, entity_set, key, [{key: guid, **values}])


def _dyn_value(env: SyncEnv, entity_set: str, key: str, guid: str, column: str) -> Any:
    return dyn_get(env, entity_set, key, guid, [column])[column]


def _consent_log(env: SyncEnv, guid: str) -> list[tuple[str, str, str | None, str | None, str]]:
    with env.state().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT changed_in, outcome, marketo_value, dynamics_value, field FROM consent_log "
                "WHERE record_key = :key ORDER BY id"
            ),
            {"key": guid},
        ).all()
    return [tuple(r) for r in rows]


def test_an_opt_out_made_in_marketo_is_never_undone_from_dynamics(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cara = new_guid()
    _dyn_set(sync_env, "contacts", "contactid", cara, lastname="Cara", emailaddress1="cara@example.com")
    sync_env.run("sync_contact")
    assert _person(sync_env, cara).get("unsubscribed") in (False, None)  # Marketo leaves out nulls

    # Opt-out in Marketo reaches Dataverse within one run.
    _mkto_set(sync_env, cara, unsubscribed=True)
    sync_env.run("sync_contact")
    assert _dyn_value(sync_env, "contacts", "contactid", cara, "donotbulkemail") is True
    # Dataverse held no value (it was not read in this run, and the last synced value was no opt-out).
    assert _consent_log(sync_env, cara) == [("marketo", "opt_out", "True", None, "unsubscribed")]

    # A re-subscribe made in Dataverse (not the consent owner) is not carried to Marketo; the
    # opt-out is written back to Dataverse, so the two sides agree again.
    _dyn_set(sync_env, "contacts", "contactid", cara, donotbulkemail=False)
    sync_env.reset_stats()
    sync_env.run("sync_contact")
    assert _person(sync_env, cara)["unsubscribed"] is True
    assert _dyn_value(sync_env, "contacts", "contactid", cara, "donotbulkemail") is True
    assert "POST /rest/v1/leads.json" not in write_calls(sync_env.marketo.stats()), "nothing sent to Marketo"
    assert _consent_log(sync_env, cara)[-1] == (
        "dynamics",
        "resubscribe_refused",
        "True",
        "False",
        "unsubscribed",
    )

    # The write-back is not seen as a new change: the next run writes nothing anywhere.
    sync_env.reset_stats()
    sync_env.run("sync_contact")
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}
    assert len(_consent_log(sync_env, cara)) == 2
    assert_reconciled(capsys)


def test_an_opt_out_made_in_dynamics_wins_and_the_owner_can_resubscribe(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    lee = new_guid()
    _dyn_set(sync_env, "leads", "leadid", lee, lastname="Lee", emailaddress1="lee@example.com")
    sync_env.run("sync_lead")

    # Opt-out in Dataverse reaches Marketo within one run, though Marketo wins lead conflicts and
    # Marketo changed the same field the other way in the same interval.
    _dyn_set(sync_env, "leads", "leadid", lee, donotbulkemail=True)
    _mkto_set(sync_env, lee, unsubscribed=False, lastName="Lee-Marketo")
    sync_env.run("sync_lead")
    assert _person(sync_env, lee)["unsubscribed"] is True
    assert _dyn_value(sync_env, "leads", "leadid", lee, "donotbulkemail") is True
    # Marketo's write of false over a value it had never set is no consent change (an unset flag
    # is "not opted out"): the log names Dynamics as where the opt-out was made.
    assert _consent_log(sync_env, lee)[0][:2] == ("dynamics", "opt_out")

    # A re-subscribe in Marketo (the consent owner) is carried to Dataverse.
    _mkto_set(sync_env, lee, unsubscribed=False)
    sync_env.run("sync_lead")
    assert _dyn_value(sync_env, "leads", "leadid", lee, "donotbulkemail") is False
    assert _consent_log(sync_env, lee)[-1] == ("marketo", "resubscribe", "False", "True", "unsubscribed")
    assert_reconciled(capsys)


@pytest.mark.parametrize("bulk", [False, True], ids=["sync-calls", "bulk-import"])
def test_a_full_copy_never_clears_an_opt_out_of_a_marketo_person_it_matches(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    """The copy writes unlinked leads by email: a Marketo person who opted out stays opted out."""
    from tests.e2e.full_copy_support import run_full_copy

    if bulk:
        monkeypatch.setenv("AIRFLOW_VAR_MDS_FULL_COPY_BULK_THRESHOLD", "1")
    lead = new_guid()
    hook = sync_env.mkto()
    try:
        made = hook.sync_leads(
            [{"email": "opted@consent.test", "lastName": "Opted", "unsubscribed": True}], action="createOnly"
        )
        assert all(r.ok for r in made), made
    finally:
        hook.close()
    row = {
        "leadid": lead,
        "lastname": "Opted",
        "emailaddress1": "opted@consent.test",
        "donotbulkemail": False,
    }
    _dyn_set(sync_env, "leads", "leadid", lead, **{k: v for k, v in row.items() if k != "leadid"})

    run_full_copy(entities=["lead"])

    person = _person(sync_env, lead)
    assert person["email"] == "opted@consent.test", "the existing person was matched by email"
    assert person["unsubscribed"] is True, "the copy did not re-subscribe a person who opted out"
