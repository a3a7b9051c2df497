"""Two Dynamics records merged with Dataverse's ``Merge`` action become one Marketo person (§6.3).

Both linked: the merged record's person is merged into the survivor's with Marketo's merge
endpoint. Only the merged record linked: its person moves to the survivor (re-keyed, the
survivor's whole record written). Survivor not synced (filter No): the merged record's person is
flagged deleted. Either way both Dynamics ids resolve to the one person in the id map, and the
merged record writes no more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import assert_reconciled, dyn_upsert, read_persons

pytestmark = pytest.mark.e2e

FIELDS = ["id", "externalPersonId", "msdType", "msdIsDeleted", "email", "lastName", "title"]


def _merge(env: SyncEnv, table: str, target: str, subordinate: str, **content: Any) -> None:
    kind = f"Microsoft.Dynamics.CRM.{table}"
    key = f"{table}id"
    body: dict[str, Any] = {
        "Target": {"@odata.type": kind, key: target},
        "Subordinate": {"@odata.type": kind, key: subordinate},
        "PerformParentingChecks": False,
    }
    if content:
        body["UpdateContent"] = {"@odata.type": kind, **content}
    hook = env.dyn()
    try:
        resp = hook.call("POST", "Merge", json=body)
        assert resp.status_code == 204, resp.text
    finally:
        hook.close()


def _links(env: SyncEnv, entity: str, *guids: str) -> dict[str, tuple[str, str | None]]:
    with env.state().connect() as conn:
        rows = conn.execute(
            text("SELECT dynamics_id, state, marketo_id FROM id_map WHERE entity = :e"), {"e": entity}
        ).all()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows if str(r[0]) in guids}


def _person(env: SyncEnv, guid: str) -> dict[str, Any]:
    (person,) = read_persons(env, [guid], FIELDS)
    return person


@pytest.mark.parametrize(
    ("table", "entity_set", "dag"), [("lead", "leads", "sync_lead"), ("contact", "contacts", "sync_contact")]
)
def test_merge_of_two_linked_records_leaves_one_person(
    sync_env: SyncEnv,
    new_guid: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    table: str,
    entity_set: str,
    dag: str,
) -> None:
    key = f"{table}id"
    winner, loser = new_guid(), new_guid()
    rows = [
        {key: winner, "lastname": "Winner", "jobtitle": "CEO", "emailaddress1": f"win-{table}@merge.test"},
        {key: loser, "lastname": "Loser", "jobtitle": "CFO", "emailaddress1": f"lose-{table}@merge.test"},
    ]
    dyn_upsert(sync_env, entity_set, key, rows)
    sync_env.run(dag)
    kept, merged_away = _person(sync_env, winner), _person(sync_env, loser)

    _merge(sync_env, table, winner, loser, jobtitle="Chief")
    sync_env.reset_stats()
    sync_env.run(dag)

    assert sync_env.marketo.stats()["records"].get("lead.merge") == 1
    assert read_persons(sync_env, [loser], FIELDS) == [], "the merged record's person is merged away"
    person = _person(sync_env, winner)
    assert person["id"] == kept["id"]
    assert (person["lastName"], person["title"], person["email"]) == (
        "Winner",
        "Chief",
        f"win-{table}@merge.test",
    )
    links = _links(sync_env, table, winner, loser)
    assert links[winner] == ("active", str(kept["id"]))
    assert links[loser] == ("merged", str(kept["id"])), "both Dynamics ids resolve to the one person"
    assert merged_away["id"] != kept["id"]

    # The merged (now inactive) record writes no more, whatever changes on it.
    sync_env.run(dag)
    assert read_persons(sync_env, [loser], FIELDS) == []
    assert_reconciled(capsys)


def test_merge_into_an_unsynced_record_moves_the_link(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    loser, winner = new_guid(), new_guid()
    dyn_upsert(
        sync_env, "leads", "leadid", [{"leadid": loser, "lastname": "Old", "emailaddress1": "old@merge.test"}]
    )
    sync_env.run("sync_lead")
    before = _person(sync_env, loser)
    row = {"leadid": winner, "lastname": "New", "jobtitle": "Buyer", "emailaddress1": "new@merge.test"}
    dyn_upsert(sync_env, "leads", "leadid", [row])  # created after the last run: not linked yet

    _merge(sync_env, "lead", winner, loser)
    sync_env.run("sync_lead")

    person = _person(sync_env, winner)
    assert person["id"] == before["id"], "the loser's person moved to the survivor"
    assert (person["lastName"], person["title"], person["email"]) == ("New", "Buyer", "new@merge.test")
    assert read_persons(sync_env, [loser], FIELDS) == []
    assert _links(sync_env, "lead", winner, loser) == {
        winner: ("active", str(before["id"])),
        loser: ("merged", str(before["id"])),
    }
    assert_reconciled(capsys)


def test_merge_into_a_record_that_does_not_sync_flags_the_person_deleted(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    loser, winner = new_guid(), new_guid()
    dyn_upsert(
        sync_env,
        "leads",
        "leadid",
        [{"leadid": loser, "lastname": "Synced", "emailaddress1": "s@merge.test"}],
    )
    dyn_upsert(
        sync_env,
        "leads",
        "leadid",
        [{"leadid": winner, "lastname": "Private", "emailaddress1": "p@merge.test", "new_synctomkto": False}],
    )
    sync_env.run("sync_lead")

    _merge(sync_env, "lead", winner, loser)
    sync_env.run("sync_lead")

    (person,) = read_persons(sync_env, [loser], FIELDS)
    assert person["msdIsDeleted"] is True, "the survivor does not sync: the person is flagged deleted"
    assert read_persons(sync_env, [winner], FIELDS) == []
    assert _links(sync_env, "lead", loser)[loser][0] == "deleted"
    assert_reconciled(capsys)
