"""A person deleted in Marketo is not re-created half-empty by the next Dynamics edit (§2.8).

The defect this guards against: after ``POST /rest/v1/leads/delete.json`` of a synced lead's
person and an edit of the lead in Dataverse, the next ``sync_lead`` sent the changed field only
with ``createOrUpdate`` and Marketo made a new person holding the lead's key and that field (no
email, no name). Now a linked person's changes go by ``updateOnly``: a person gone from Marketo
is reported (a parked record error naming it) and created only where the YAML says
``recreate_deleted: true``, then from the whole Dataverse record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import assert_reconciled, dyn_get, dyn_upsert, read_persons

pytestmark = pytest.mark.e2e

FIELDS = ["id", "externalPersonId", "email", "firstName", "lastName", "title"]


def _persons(env: SyncEnv, guid: str) -> list[dict[str, Any]]:
    return read_persons(env, [guid], FIELDS)


def _delete_person(env: SyncEnv, lead_id: int) -> None:
    hook = env.mkto()
    try:
        (result,) = hook.delete_leads([lead_id])
        assert result.ok, result
    finally:
        hook.close()


def _dyn_set(env: SyncEnv, guid: str, **values: Any) -> None:
    dyn_upsert(env, "leads", "leadid", [{"leadid": guid, **values}])


def _errors(env: SyncEnv, guid: str) -> list[tuple[str, str, bool, Any]]:
    with env.state().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT code, message, parked, resolved_at FROM record_error "
                "WHERE entity = 'lead' AND source_id = :guid ORDER BY id"
            ),
            {"guid": guid},
        ).all()
    return [(r[0], r[1], bool(r[2]), r[3]) for r in rows]


def _synced_then_deleted_in_marketo(env: SyncEnv, guid: str) -> int:
    _dyn_set(env, guid, firstname="Dana", lastname="Deleted", emailaddress1="dana@example.com")
    env.run("sync_lead")
    (person,) = _persons(env, guid)
    _delete_person(env, int(person["id"]))
    assert _persons(env, guid) == []
    _dyn_set(env, guid, jobtitle="Buyer")  # the edit that used to re-create a half-person
    return int(person["id"])


def test_a_person_deleted_in_marketo_is_reported_not_recreated(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    dana = new_guid()
    marketo_id = _synced_then_deleted_in_marketo(sync_env, dana)

    sync_env.run("sync_lead")
    assert _persons(sync_env, dana) == [], "nothing was created in Marketo"
    ((code, reason, parked, resolved),) = _errors(sync_env, dana)
    assert (code, parked, resolved) == ("deleted_in_marketo", True, None)
    assert f"Marketo person {marketo_id}" in reason
    assert "recreate_deleted" in reason

    _dyn_set(sync_env, dana, jobtitle="Head buyer")
    sync_env.run("sync_lead")
    assert _persons(sync_env, dana) == [], "a later edit creates nothing either"
    assert [e[0] for e in _errors(sync_env, dana)] == ["deleted_in_marketo"]


def test_recreate_deleted_writes_the_whole_record(sync_env: SyncEnv, new_guid: Callable[[], str]) -> None:
    lead_yaml = sync_env.entities_dir / "lead.yaml"
    lead_yaml.write_text(
        lead_yaml.read_text().replace("consent_owner:", "recreate_deleted: true\nconsent_owner:")
    )
    dana = new_guid()
    old_id = _synced_then_deleted_in_marketo(sync_env, dana)

    # The run reads the deleted-leads feed first: the link forgets the person, so the lead's edit
    # in the same run is planned as a new person, from the whole record.
    sync_env.run("sync_lead")
    (person,) = _persons(sync_env, dana)
    assert int(person["id"]) != old_id
    assert (person["email"], person["firstName"], person["lastName"], person["title"]) == (
        "dana@example.com",
        "Dana",
        "Deleted",
        "Buyer",
    )
    ((code, _, parked, resolved),) = _errors(sync_env, dana)
    assert (code, parked) == ("deleted_in_marketo", False)
    assert resolved is not None, "the re-creation settled the error"


def test_a_delete_in_marketo_is_reported_by_the_next_run_without_any_edit(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    ed = new_guid()
    _dyn_set(sync_env, ed, lastname="Quiet", emailaddress1="ed@example.com")
    sync_env.run("sync_lead")
    (person,) = _persons(sync_env, ed)
    _delete_person(sync_env, int(person["id"]))

    sync_env.run("sync_lead")

    ((code, reason, parked, resolved),) = _errors(sync_env, ed)
    assert (code, parked, resolved) == ("deleted_in_marketo", True, None)
    assert f"Marketo person {person['id']}" in reason
    assert dyn_get(sync_env, "leads", "leadid", ed, ["lastname"])["lastname"] == "Quiet", "kept in Dynamics"
    assert _persons(sync_env, ed) == []
    sync_env.run("sync_lead")  # read again: still the one report row
    assert len(_errors(sync_env, ed)) == 1
    assert_reconciled(capsys)


def test_a_merge_in_marketo_keeps_the_survivors_link_and_reports_the_other_record(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    kept, merged = new_guid(), new_guid()
    _dyn_set(sync_env, kept, lastname="Keeper", emailaddress1="keeper@example.com")
    _dyn_set(sync_env, merged, lastname="Twin", emailaddress1="twin.keeper@example.com")
    sync_env.run("sync_lead")
    (survivor,) = _persons(sync_env, kept)
    (loser,) = _persons(sync_env, merged)
    hook = sync_env.mkto()
    try:
        assert hook.merge_leads(int(survivor["id"]), [int(loser["id"])]).ok
    finally:
        hook.close()

    sync_env.run("sync_lead")

    ((code, reason, parked, _),) = _errors(sync_env, merged)
    assert (code, parked) == ("deleted_in_marketo", True)
    assert f"merged into Marketo person {survivor['id']}" in reason
    assert _errors(sync_env, kept) == []
    with sync_env.state().connect() as conn:
        links: dict[str, str] = dict(
            conn.execute(
                text("SELECT dynamics_id, state || ':' || marketo_id FROM id_map WHERE entity = 'lead'")
            ).all()
        )
    assert links[kept] == f"active:{survivor['id']}", "the survivor keeps its link"
    assert links[merged] == f"merged:{survivor['id']}"
    assert dyn_get(sync_env, "leads", "leadid", merged, ["lastname"])["lastname"] == "Twin", (
        "kept in Dynamics"
    )

    _dyn_set(sync_env, merged, jobtitle="Edited after the merge")
    sync_env.run("sync_lead")
    assert _persons(sync_env, merged) == [], "not re-created"
    (person,) = _persons(sync_env, kept)
    assert person.get("title") != "Edited after the merge", (
        "the other record no longer writes to the survivor"
    )
    assert_reconciled(capsys)
