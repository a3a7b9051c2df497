"""Programs (asset API), channels and program membership: paging, status rules, errors, activities."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.emulators.marketo.conftest import Api, error_code

ASSET = "/rest/asset/v1"
LEADS = "/rest/v1/leads.json"


def _program(api: Api, channel: str = "Webinar", ptype: str = "Event with Webinar") -> dict[str, Any]:
    name = f"Prog {channel} {uuid.uuid4().hex[:8]}"
    body = {"programs": [{"name": name, "type": ptype, "channel": channel}]}
    return dict(api.emu.admin("POST", "programs", json=body).json()["result"][0])


def _leads(api: Api, count: int) -> list[int]:
    tag = uuid.uuid4().hex[:8]
    records = [{"email": f"pm-{tag}-{i}@example.com"} for i in range(count)]
    return [int(r["id"]) for r in api.post(LEADS, {"input": records})["result"]]


def _status(api: Api, program_id: int, status: str, lead_ids: list[int]) -> list[dict[str, Any]]:
    body = {"statusName": status, "input": [{"leadId": i} for i in lead_ids]}
    answer = api.post(f"/rest/v1/programs/{program_id}/members/status.json", body)
    assert answer["success"], answer
    return list(answer["result"])


def _token_now(api: Api) -> str:
    since = "2100-01-01T00:00:00Z"
    return str(api.get("/rest/v1/activities/pagingtoken.json", sinceDatetime=since)["nextPageToken"])


def test_browse_pages_by_offset_and_reads_by_id_and_name(api: Api) -> None:
    made = [_program(api) for _ in range(3)]
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        body = api.get(f"{ASSET}/programs.json", maxReturn=2, offset=offset)
        assert body["success"]
        assert body["errors"] == []
        if "result" not in body:  # past the end: a warning, no result
            assert body["warnings"] == ["No assets found for the given search criteria."]
            break
        assert len(body["result"]) <= 2
        seen.extend(body["result"])
        offset += 2
    ids = [p["id"] for p in seen]
    assert ids == sorted(ids)
    assert {p["id"] for p in made} <= set(ids)
    assert {p["name"] for p in seen} >= {"Emulator Program", "Product Webinar 2025"}  # default + seed
    one = api.get(f"{ASSET}/program/{made[0]['id']}.json")["result"][0]
    assert one["name"] == made[0]["name"]
    assert (one["type"], one["channel"], one["status"], one["tags"]) == (
        "Event with Webinar",
        "Webinar",
        "",
        [],
    )
    assert one["createdAt"].endswith("Z+0000")
    assert api.get(f"{ASSET}/program/byName.json", name=made[1]["name"])["result"][0]["id"] == made[1]["id"]
    missing = api.get(f"{ASSET}/program/999999.json")
    assert missing["success"]
    assert "result" not in missing
    assert missing["warnings"]
    assert error_code(api.get(f"{ASSET}/programs.json", maxReturn=201)) == "1003"


def test_create_program_and_channels(api: Api) -> None:
    name = f"Created {uuid.uuid4().hex[:8]}"
    form = {"name": name, "type": "Email", "channel": "Email Send", "folder": '{"id":28,"type":"Folder"}'}
    created = api.call("POST", f"{ASSET}/programs.json", data=form).json()["result"][0]
    assert (created["type"], created["channel"], created["status"]) == ("Email", "Email Send", "unlocked")
    clash = api.call("POST", f"{ASSET}/programs.json", data={**form, "channel": "Webinar", "name": "x"})
    assert error_code(clash.json()) == "709"  # a Webinar channel cannot serve an Email program
    webinar = api.get(f"{ASSET}/channel/byName.json", name="Webinar")["result"][0]
    statuses = [(s["name"], s["step"], s["success"]) for s in webinar["progressionStatuses"]]
    assert statuses[:4] == [
        ("Not in Program", 0, False),
        ("Invited", 10, False),
        ("Registered", 20, False),
        ("No Show", 30, False),
    ]
    assert ("Attended", 30, True) in statuses
    names = {c["name"] for c in api.get(f"{ASSET}/channels.json", maxReturn=200)["result"]}
    assert {"Webinar", "Email Send", "Nurture", "Operational"} <= names


def test_status_progression_rules_and_per_record_results(api: Api) -> None:
    program = _program(api)
    a, b, c = _leads(api, 3)
    first = _status(api, program["id"], "Registered", [a, b, 99_999_999])
    assert first[0] == {"seq": 0, "status": "created", "leadId": a}
    assert first[2]["reasons"][0]["code"] == "1004"
    backwards = _status(api, program["id"], "Invited", [a])  # lower step than Registered
    past = "Lead skipped because it is already in or past this status"
    assert backwards == [{"seq": 0, "status": "skipped", "reasons": [{"code": "1037", "message": past}]}]
    assert _status(api, program["id"], "Registered", [a])[0]["reasons"][0]["code"] == "1037"
    assert _status(api, program["id"], "Attended", [a])[0]["status"] == "updated"
    assert _status(api, program["id"], "No Show", [a])[0]["status"] == "updated"  # same step: sideways
    bad = api.post(
        f"/rest/v1/programs/{program['id']}/members/status.json",
        {"statusName": "Opened", "input": [{"leadId": c}]},
    )
    assert error_code(bad) == "1025"  # an Email Send status, not a Webinar one
    unknown = api.post(
        "/rest/v1/programs/987654/members/status.json", {"statusName": "Invited", "input": [{"leadId": c}]}
    )
    assert error_code(unknown) == "1013"
    members = api.get(
        f"/rest/v1/programs/{program['id']}/members.json",
        filterType="leadId",
        filterValues=f"{a},{b},{c}",
        fields="leadId,statusName,reachedSuccess",
    )
    assert members["result"] == [
        {"seq": 0, "leadId": a, "statusName": "No Show", "reachedSuccess": True},
        {"seq": 1, "leadId": b, "statusName": "Registered", "reachedSuccess": False},
    ]


def test_members_are_paged_and_filtered(api: Api) -> None:
    program = _program(api, "Nurture", "Engagement")
    leads = _leads(api, 7)
    _status(api, program["id"], "Member", leads)
    _status(api, program["id"], "Engaged", leads[:2])
    pages, token = [], None
    while True:
        params: dict[str, Any] = {
            "filterType": "statusName",
            "filterValues": "Member,Engaged",
            "batchSize": 3,
        }
        if token:
            params["nextPageToken"] = token
        body = api.get(f"/rest/v1/programs/{program['id']}/members.json", **params)
        pages.append(body["result"])
        token = body.get("nextPageToken")
        if not body["moreResult"]:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r["leadId"] for p in pages for r in p] == sorted(leads)
    assert set(pages[0][0]) == {
        "seq",
        "acquiredBy",
        "leadId",
        "membershipDate",
        "programId",
        "reachedSuccess",
    }
    success = api.call(
        "POST",
        f"/rest/v1/programs/{program['id']}/members.json",
        params={"_method": "GET"},
        data={"filterType": "reachedSuccess", "filterValues": "true"},
    ).json()
    assert sorted(r["leadId"] for r in success["result"]) == sorted(leads[:2])
    path = f"/rest/v1/programs/{program['id']}/members.json"
    assert error_code(api.get(path, filterType="firstName", filterValues="x")) == "1006"
    assert error_code(api.get(path, filterType="leadId", filterValues="1", fields="nope")) == "1006"
    too_long = {"filterType": "updatedAt", "startAt": "2025-01-01T00:00:00Z", "endAt": "2025-01-09T00:00:00Z"}
    assert error_code(api.get(path, **too_long)) == "1003"  # at most seven days
    assert error_code(api.get(path)) == "701"


def test_changes_and_removals_write_change_status_in_progression(api: Api) -> None:
    program = _program(api)
    a, b = _leads(api, 2)
    token = _token_now(api)
    _status(api, program["id"], "Registered", [a, b])
    _status(api, program["id"], "Attended", [a])
    removed = api.post(
        f"/rest/v1/programs/{program['id']}/members/delete.json", {"input": [{"leadId": b}, {"leadId": b}]}
    )
    assert removed["result"][0] == {"seq": 0, "status": "deleted", "leadId": b}
    assert removed["result"][1]["reasons"][0] == {"code": "1037", "message": "Lead not in program"}
    feed = api.get("/rest/v1/activities.json", nextPageToken=token, activityTypeIds="104")["result"]
    mine = [(r["leadId"], {x["name"]: x["value"] for x in r["attributes"]}) for r in feed]
    moves = [(lead, attrs["Old Status"], attrs["New Status"], attrs["Success"]) for lead, attrs in mine]
    assert moves == [
        (a, "Not in Program", "Registered", False),
        (b, "Not in Program", "Registered", False),
        (a, "Registered", "Attended", True),
        (b, "Registered", "Not in Program", False),
    ]
    assert all(r["primaryAttributeValueId"] == program["id"] for r in feed)
    assert all(r["primaryAttributeValue"] == program["name"] for r in feed)
    attrs = mine[2][1]
    assert attrs["Old Status ID"] != attrs["New Status ID"]
    assert {"Program Member ID", "Acquired By", "Reason"} <= set(attrs)
    types = {t["id"]: t["name"] for t in api.get("/rest/v1/activities/types.json")["result"]}
    assert types[104] == "Change Status in Progression"
    assert {1, 2, 6, 7, 10, 11, 12, 13, 32, 37, 46} <= set(types)


def test_lead_api_status_and_a_leads_memberships(api: Api) -> None:
    webinar, email = _program(api), _program(api, "Email Send", "Email")
    a, b = _leads(api, 2)
    _status(api, webinar["id"], "Invited", [a])
    _status(api, email["id"], "Sent", [a])
    changed = api.post(
        f"/rest/v1/leads/programs/{webinar['id']}/status.json",
        {"status": "Registered", "input": [{"id": a}, {"id": b}]},
    )
    assert changed["result"][0] == {"id": a, "status": "updated"}
    assert changed["result"][1]["status"] == "skipped"  # only members can be changed this way
    own = api.get(f"/rest/v1/leads/{a}/programMembership.json")["result"]
    assert [(m["id"], m["progressionStatus"]) for m in own] == [
        (webinar["id"], "Registered"),
        (email["id"], "Sent"),
    ]
    assert "leadId" not in own[0]
    listed = api.get("/rest/v1/leads/programs.json", id=f"{a},{b}")["result"]
    assert [(m["leadId"], m["id"]) for m in listed] == [(a, webinar["id"]), (a, email["id"])]
    by_program = api.get(f"/rest/v1/leads/programs/{webinar['id']}.json", fields="id,email")["result"]
    assert by_program[0]["id"] == a
    assert by_program[0]["membership"]["progressionStatus"] == "Registered"
    api.post("/rest/v1/leads/delete.json", {"input": [{"id": a}]})
    assert api.get(f"/rest/v1/leads/{a}/programMembership.json")["result"] == []


@pytest.mark.parametrize("path", ["members/status.json", "members/delete.json"])
def test_member_writes_need_input(api: Api, path: str) -> None:
    program = _program(api)
    assert (
        error_code(api.post(f"/rest/v1/programs/{program['id']}/{path}", {"statusName": "Invited"})) == "701"
    )


def test_a_merge_combines_memberships(api: Api) -> None:
    webinar, nurture = _program(api), _program(api, "Nurture", "Engagement")
    winner, loser = _leads(api, 2)
    _status(api, webinar["id"], "Invited", [winner, loser])
    _status(api, nurture["id"], "Member", [loser])
    assert api.post(f"/rest/v1/leads/{winner}/merge.json", leadId=str(loser))["success"]
    kept = api.get(f"/rest/v1/leads/{winner}/programMembership.json")["result"]
    assert sorted(m["id"] for m in kept) == sorted([webinar["id"], nurture["id"]])
    assert api.get(f"/rest/v1/leads/{loser}/programMembership.json")["result"] == []
