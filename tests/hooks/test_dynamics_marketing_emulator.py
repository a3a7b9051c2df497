"""DynamicsHook's marketing-list and campaign actions against a real Dataverse emulator over HTTPS.

Campaigns, lists and members are read back with the hook's generic ``query`` and
``track_changes``: the marketing tables need nothing else.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crm_sync_hooks.caches import clear_process_caches
from crm_sync_hooks.dynamics import DynamicsHook
from crm_sync_hooks.errors import FatalApiError
from crm_sync_hooks.results import WriteStatus
from tests.hooks.test_dynamics_emulator import FAST, connect
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator("dynamics", tmp_path_factory.mktemp("dynamics_marketing"))
    yield emu
    clear_process_caches()
    gc.collect()  # close idle keep-alive connections so the server shuts down at once
    emu.stop()


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator, tmp_path: Any) -> Iterator[DynamicsHook]:
    hook = DynamicsHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    yield hook
    hook.close()


def rows(hook: DynamicsHook, entity_set: str, select: list[str], filter_: str) -> list[dict[str, Any]]:
    return [r for page in hook.query(entity_set, select=select, filter=filter_) for r in page]


def new_list(hook: DynamicsHook, code: int = 2) -> str:
    list_id = str(uuid.uuid4())
    [done] = hook.upsert_records(
        "lists",
        [{"listid": list_id, "listname": f"Program {list_id[:6]}", "createdfromcode": code}],
        ["listid"],
        id_column="listid",
    )
    assert done.status is WriteStatus.CREATED, done.reason
    return list_id


def people(hook: DynamicsHook, entity_set: str, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    records = [{"emailaddress1": f"{tag}{i}@mkt.test", "lastname": f"M{i}"} for i in range(count)]
    if entity_set == "leads":
        key, pk = "leadid", "leadid"
        records = [{"leadid": str(uuid.uuid4()), **r} for r in records]
    else:
        key, pk = "emailaddress1", "contactid"
    done = hook.upsert_records(entity_set, records, [key], id_column=pk)
    assert all(r.ok for r in done), [r.reason for r in done]
    return [str(r.id) for r in done]


def member_ids(hook: DynamicsHook, list_id: str) -> list[str]:
    members = rows(hook, "listmembers", ["_entityid_value"], f"_listid_value eq {list_id}")
    return sorted(m["_entityid_value"] for m in members)


def test_adding_list_members_in_chunks_twice_adds_each_once(
    hook: DynamicsHook, emulator: RunningEmulator
) -> None:
    list_id, contacts = new_list(hook), people(hook, "contacts", 3)
    emulator.admin("POST", "stats/reset")
    assert hook.add_list_members(list_id, "contact", contacts, chunk_size=2) == 3
    assert hook.add_list_members(list_id, "contact", contacts, chunk_size=2) == 3
    assert member_ids(hook, list_id) == sorted(contacts)
    [row] = rows(hook, "lists", ["membercount"], f"listid eq {list_id}")
    assert row["membercount"] == 3
    assert emulator.stats()["calls"]["POST /api/data/v9.2/AddListMembersList"] == 4


def test_a_refused_member_raises_with_the_dataverse_code(hook: DynamicsHook) -> None:
    list_id, [lead] = new_list(hook), people(hook, "leads", 1)
    with pytest.raises(FatalApiError) as refused:
        hook.add_list_members(list_id, "contact", [lead])
    assert refused.value.code == "0x80040203"
    assert "createdfromcode" in str(refused.value)
    assert member_ids(hook, list_id) == []
    with pytest.raises(ValueError, match="member_table"):
        hook.add_list_members(list_id, "campaign", [lead])
    with pytest.raises(ValueError, match="GUID"):
        hook.add_list_members(list_id, "lead", ["not-a-guid"])


def test_removing_list_members_reports_each_and_shows_in_change_tracking(hook: DynamicsHook) -> None:
    list_id, contacts = new_list(hook), people(hook, "contacts", 3)
    hook.add_list_members(list_id, "contact", contacts)
    pages = list(hook.track_changes("listmembers", ["_listid_value", "_entityid_value"]))
    members = {r["_entityid_value"]: r["listmemberid"] for p in pages for r in p.records}
    delta_link = pages[-1].delta_link
    assert delta_link

    results = hook.remove_list_members(list_id, contacts[:2], batch_size=1)

    assert [r.status for r in results] == [WriteStatus.DELETED, WriteStatus.DELETED]
    assert member_ids(hook, list_id) == [contacts[2]]
    delta = list(hook.track_changes("listmembers", ["_entityid_value"], delta_link=delta_link))
    assert sorted(i for p in delta for i in p.deleted_ids) == sorted(members[c] for c in contacts[:2])


def test_attaching_a_list_to_a_campaign_answers_the_same_item_twice(hook: DynamicsHook) -> None:
    list_id, campaign = new_list(hook), str(uuid.uuid4())
    hook.upsert_records(
        "campaigns",
        [{"campaignid": campaign, "name": "Program 2001"}],
        ["campaignid"],
        id_column="campaignid",
    )
    item = hook.add_list_to_campaign(list_id, campaign)
    assert hook.add_list_to_campaign(list_id, campaign) == item
    [row] = rows(hook, "campaignitems", ["entityid", "entitytype"], f"_campaignid_value eq {campaign}")
    assert (row["campaignitemid"], row["entityid"], row["entitytype"]) == (item, list_id, "list")
    with pytest.raises(FatalApiError) as missing:
        hook.add_list_to_campaign(list_id, str(uuid.uuid4()))
    assert missing.value.code == "0x80040217"
