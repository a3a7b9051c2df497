"""Campaigns, marketing lists and their members: the tables, the list actions and their refusals.

One unseeded emulator (limits off) serves the module; every test makes its own records. Batch
bodies are built and read with the hook's own multipart helpers, the limits test starts its own
emulator with a tiny request limit.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from crm_sync_hooks.odata_batch import BatchOperation, build_batch, parse_batch
from emulators.dynamics.errors import INVALID_ARGUMENT, NOT_FOUND
from tests.emulators.dynamics.conftest import Dataverse, token_for
from tests.support.emulator_procs import start_emulator

NS = "Microsoft.Dynamics.CRM."
ADD, REMOVE, ITEM = f"{NS}AddMemberList", f"{NS}RemoveMemberList", f"{NS}AddItemCampaign"
TRACK = "odata.track-changes"


@pytest.fixture(scope="module")
def dv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    emu = start_emulator("dynamics", tmp_path_factory.mktemp("marketing"), ["--limits", "off"])
    try:
        yield Dataverse(emu, token_for(emu))
    finally:
        emu.stop()


def create(dv: Dataverse, entity_set: str, body: dict[str, Any]) -> str:
    resp = dv.call("POST", entity_set, json=body)
    assert resp.status_code == 204, resp.text
    return str(resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))


def person(dv: Dataverse, entity_set: str = "contacts") -> str:
    tag = uuid.uuid4().hex[:8]
    return create(dv, entity_set, {"firstname": "Mia", "lastname": tag, "emailaddress1": f"{tag}@list.test"})


def new_list(dv: Dataverse, code: int = 2, **extra: Any) -> str:
    return create(dv, "lists", {"listname": f"List {uuid.uuid4().hex[:6]}", "createdfromcode": code, **extra})


def add(dv: Dataverse, list_id: str, entity_id: str) -> Any:
    return dv.call("POST", f"lists({list_id})/{ADD}", json={"EntityId": entity_id})


def members(dv: Dataverse, list_id: str) -> list[dict[str, Any]]:
    rows, _ = dv.read_all(
        f"listmembers?$select=_listid_value,_entityid_value,entitytype&$filter=_listid_value eq {list_id}",
        500,
    )
    return rows


def member_count(dv: Dataverse, list_id: str) -> int:
    return int(dv.get(f"lists({list_id})?$select=membercount").json()["membercount"])


def error(resp: Any) -> tuple[int, str]:
    return resp.status_code, str(resp.json()["error"]["code"])


def delta_link(dv: Dataverse, entity_set: str, select: str) -> str:
    _, last = dv.read_all(f"{entity_set}?$select={select}", 500, prefer=TRACK)
    return str(last["@odata.deltaLink"])


def changes(dv: Dataverse, link: str, key: str) -> tuple[set[str], set[str]]:
    """(ids changed, ids deleted) since ``link``."""
    rows, _ = dv.read_all(link, 500)
    deleted = {r["id"] for r in rows if str(r.get("@odata.context", "")).endswith("$deletedEntity")}
    return {r[key] for r in rows if key in r}, deleted


# -- tables ------------------------------------------------------------------------------------


def test_a_campaign_is_created_and_read_with_its_documented_columns(dv: Dataverse) -> None:
    campaign = create(
        dv,
        "campaigns",
        {"name": "Spring webinar", "codename": "WEB-1", "typecode": 3, "budgetedcost": 1200.5},
    )
    got = dv.get(
        f"campaigns({campaign})?$select=name,codename,typecode,budgetedcost,statecode,statuscode,createdon",
        headers={"Prefer": 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'},
    ).json()
    assert (got["name"], got["codename"], got["typecode"], got["budgetedcost"]) == (
        "Spring webinar",
        "WEB-1",
        3,
        1200.5,
    )
    assert (got["statecode"], got["statuscode"]) == (0, 0)  # Active, Proposed
    assert got["statuscode@OData.Community.Display.V1.FormattedValue"] == "Proposed"
    assert got["createdon"].endswith("Z")


def test_a_campaign_has_no_actualcost_column(dv: Dataverse) -> None:
    resp = dv.call("POST", "campaigns", json={"name": "Costly", "actualcost": 5})
    assert resp.status_code == 400
    assert "actualcost" in resp.json()["error"]["message"]


def test_a_list_needs_its_member_type_and_keeps_it(dv: Dataverse) -> None:
    assert error(dv.call("POST", "lists", json={"listname": "No type"})) == (400, INVALID_ARGUMENT)
    list_id = new_list(dv, code=4)
    got = dv.get(f"lists({list_id})?$select=createdfromcode,type,membercount,statuscode").json()
    assert (got["createdfromcode"], got["type"], got["membercount"], got["statuscode"]) == (4, False, 0, 0)
    changed = dv.call("PATCH", f"lists({list_id})", json={"createdfromcode": 2})
    assert error(changed) == (400, INVALID_ARGUMENT)
    same = dv.call("PATCH", f"lists({list_id})", json={"createdfromcode": 4, "purpose": "x"})
    assert same.status_code == 204
    missing = dv.call("PATCH", f"lists({uuid.uuid4()})", json={"purpose": "x"}, headers={"If-Match": "*"})
    assert error(missing) == (404, NOT_FOUND)


# -- members -----------------------------------------------------------------------------------


def test_add_member_list_adds_a_member_once(dv: Dataverse) -> None:
    list_id, contact = new_list(dv), person(dv)
    first, again = add(dv, list_id, contact), add(dv, list_id, contact)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["Id"] == again.json()["Id"]
    [row] = members(dv, list_id)
    assert (row["_listid_value"], row["_entityid_value"], row["entitytype"]) == (list_id, contact, "contact")
    assert row["listmemberid"] == first.json()["Id"]
    assert member_count(dv, list_id) == 1


def test_add_list_members_list_adds_many_and_skips_existing_members(dv: Dataverse) -> None:
    list_id = new_list(dv)
    contacts = [person(dv) for _ in range(3)]
    assert add(dv, list_id, contacts[0]).status_code == 200
    body = {
        "List": {"@odata.type": f"{NS}list", "listid": list_id},
        "Members": [{"@odata.type": f"{NS}contact", "contactid": c} for c in contacts],
    }
    resp = dv.call("POST", "AddListMembersList", json=body)
    assert resp.status_code == 204, resp.text
    assert sorted(r["_entityid_value"] for r in members(dv, list_id)) == sorted(contacts)
    assert member_count(dv, list_id) == 3


def test_a_member_of_another_table_is_refused_and_nothing_is_added(dv: Dataverse) -> None:
    list_id, contact, lead = new_list(dv), person(dv), person(dv, "leads")
    assert error(add(dv, list_id, lead)) == (400, INVALID_ARGUMENT)
    mixed = {
        "List": {"listid": list_id},
        "Members": [
            {"@odata.type": f"{NS}contact", "contactid": contact},
            {"@odata.type": f"{NS}lead", "leadid": lead},
        ],
    }
    refused = dv.call("POST", f"{NS}AddListMembersList", json=mixed)
    assert error(refused) == (400, INVALID_ARGUMENT)
    assert "createdfromcode" in refused.json()["error"]["message"]
    assert members(dv, list_id) == []  # the action is atomic: the contact was not added either
    assert member_count(dv, list_id) == 0


def test_a_member_that_does_not_exist_is_not_found(dv: Dataverse) -> None:
    assert error(add(dv, new_list(dv), str(uuid.uuid4()))) == (404, NOT_FOUND)


@pytest.mark.parametrize("extra", [{"type": True, "query": "<fetch/>"}, {"lockstatus": True}])
def test_dynamic_and_locked_lists_take_no_members(dv: Dataverse, extra: dict[str, Any]) -> None:
    list_id = new_list(dv, **extra)
    assert error(add(dv, list_id, person(dv))) == (400, INVALID_ARGUMENT)


def test_removed_members_leave_the_list_and_come_back_as_deletes_in_the_delta(dv: Dataverse) -> None:
    list_id, stays, goes = new_list(dv), person(dv), person(dv)
    link = delta_link(dv, "listmembers", "_listid_value,_entityid_value")
    gone_id = add(dv, list_id, goes).json()["Id"]
    kept_id = add(dv, list_id, stays).json()["Id"]
    added, _ = changes(dv, link, "listmemberid")
    assert {gone_id, kept_id} <= added
    resp = dv.call("POST", f"lists({list_id})/{REMOVE}", json={"EntityId": goes})
    assert resp.status_code == 204, resp.text
    assert dv.call("POST", f"lists({list_id})/{REMOVE}", json={"EntityId": goes}).status_code == 204
    assert [r["_entityid_value"] for r in members(dv, list_id)] == [stays]
    assert member_count(dv, list_id) == 1
    changed, deleted = changes(dv, link, "listmemberid")
    assert gone_id in deleted
    assert gone_id not in changed
    assert kept_id in changed


def test_listmembers_are_written_only_by_the_actions(dv: Dataverse) -> None:
    list_id, contact = new_list(dv), person(dv)
    member = add(dv, list_id, contact).json()["Id"]
    assert error(dv.call("POST", "listmembers", json={"entitytype": "contact"})) == (400, INVALID_ARGUMENT)
    assert dv.get(f"listmembers({member})").status_code == 405  # RetrieveMultiple only
    assert dv.call("PATCH", f"listmembers({member})", json={"name": "x"}).status_code == 405
    assert dv.call("DELETE", f"listmembers({member})").status_code == 204
    assert members(dv, list_id) == []
    assert member_count(dv, list_id) == 0


def test_deleting_a_person_removes_its_memberships(dv: Dataverse) -> None:
    list_id, contact = new_list(dv), person(dv)
    member = add(dv, list_id, contact).json()["Id"]
    link = delta_link(dv, "listmembers", "_entityid_value")
    assert dv.call("DELETE", f"contacts({contact})").status_code == 204
    assert members(dv, list_id) == []
    assert member_count(dv, list_id) == 0
    assert changes(dv, link, "listmemberid")[1] == {member}


# -- campaigns and lists -----------------------------------------------------------------------


def test_add_item_campaign_attaches_a_list_once(dv: Dataverse) -> None:
    campaign = create(dv, "campaigns", {"name": "Program 1001"})
    list_id = new_list(dv)
    body = {"Campaign": {"@odata.type": f"{NS}campaign", "campaignid": campaign}}
    first = dv.call("POST", f"lists({list_id})/{ITEM}", json=body)
    assert first.status_code == 200, first.text
    item = first.json()
    assert (item["_campaignid_value"], item["entityid"], item["entitytype"]) == (campaign, list_id, "list")
    again = dv.call("POST", f"lists({list_id})/{ITEM}", json=body).json()
    assert again["campaignitemid"] == item["campaignitemid"]
    rows = dv.get(f"campaignitems?$filter=_campaignid_value eq {campaign}").json()["value"]
    assert [r["entityid"] for r in rows] == [list_id]
    unknown = {"Campaign": {"campaignid": str(uuid.uuid4())}}
    assert error(dv.call("POST", f"lists({list_id})/{ITEM}", json=unknown)) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    ("entity_set", "key", "body", "change"),
    [
        ("campaigns", "campaignid", {"name": "Tracked campaign"}, {"statuscode": 2}),
        ("lists", "listid", {"listname": "Tracked list", "createdfromcode": 4}, {"purpose": "events"}),
    ],
)
def test_campaigns_and_lists_are_change_tracked(
    dv: Dataverse, entity_set: str, key: str, body: dict[str, Any], change: dict[str, Any]
) -> None:
    link = delta_link(dv, entity_set, "createdon")
    updated, removed = create(dv, entity_set, body), create(dv, entity_set, body)
    assert dv.call("PATCH", f"{entity_set}({updated})", json=change).status_code == 204
    assert dv.call("DELETE", f"{entity_set}({removed})").status_code == 204
    changed, deleted = changes(dv, link, key)
    assert updated in changed
    assert removed in deleted


# -- $batch and service protection -------------------------------------------------------------


def run_batch(dv: Dataverse, ops: list[BatchOperation], atomic: bool) -> tuple[int, list[Any]]:
    content_type, body = build_batch([ops], atomic=atomic)
    resp = dv.call(
        "POST",
        "$batch",
        data=body.encode(),
        headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
    )
    return resp.status_code, parse_batch(resp.headers["Content-Type"], resp.text)


def test_the_actions_run_inside_batch_change_sets(dv: Dataverse) -> None:
    root = "/api/data/v9.2"
    list_id, contact, lead = new_list(dv), person(dv), person(dv, "leads")
    campaign = create(dv, "campaigns", {"name": "Batched"})
    ops = [
        BatchOperation("POST", f"{root}/lists({list_id})/{ADD}", {"EntityId": contact}),
        BatchOperation("POST", f"{root}/lists({list_id})/{ITEM}", {"Campaign": {"campaignid": campaign}}),
    ]
    status, answers = run_batch(dv, ops, atomic=True)
    assert status == 200
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].json()["Id"] == members(dv, list_id)[0]["listmemberid"]
    failing = [
        BatchOperation("POST", f"{root}/lists({list_id})/{REMOVE}", {"EntityId": contact}),
        BatchOperation("POST", f"{root}/lists({list_id})/{ADD}", {"EntityId": lead}),
    ]
    _, answers = run_batch(dv, failing, atomic=True)
    assert [a.status for a in answers] == [400]
    assert [r["_entityid_value"] for r in members(dv, list_id)] == [contact]  # the removal rolled back


def test_the_actions_count_against_the_service_protection_limits(fresh_emulator: Any) -> None:
    dv = fresh_emulator("--limit-requests", "4")
    list_id = new_list(dv)
    contacts = [person(dv) for _ in range(2)]  # 1 + 2 requests so far
    assert add(dv, list_id, contacts[0]).status_code == 200  # the 4th
    throttled = add(dv, list_id, contacts[1])
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "0x80072322"
    assert "Retry-After" in throttled.headers
