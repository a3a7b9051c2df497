"""Leads: sync semantics with per-record results, filters, paging, delete, describe."""

from __future__ import annotations

import uuid

from tests.emulators.marketo.conftest import Api, error_code

LEADS = "/rest/v1/leads.json"


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


def test_create_or_update_reports_each_record_in_order(api: Api) -> None:
    a, b = _email("a"), _email("b")
    body = api.post(
        LEADS,
        {
            "action": "createOrUpdate",
            "lookupField": "email",
            "input": [{"email": a, "firstName": "Ann"}, {"email": b, "firstName": "Bob"}],
        },
    )
    assert body["success"] is True
    created = body["result"]
    assert [r["status"] for r in created] == ["created", "created"]

    body = api.post(LEADS, {"input": [{"email": b.upper(), "lastName": "Brown"}, {"email": _email("c")}]})
    assert [r["status"] for r in body["result"]] == ["updated", "created"]
    assert body["result"][0]["id"] == created[1]["id"]  # email matches case-insensitively

    got = api.get(LEADS, filterType="email", filterValues=b, fields="firstName,lastName,email")
    assert got["result"] == [{"firstName": "Bob", "lastName": "Brown", "email": b}]


def test_create_only_and_update_only_skip_with_documented_codes(api: Api) -> None:
    known = _email("known")
    api.post(LEADS, {"input": [{"email": known}]})
    body = api.post(LEADS, {"action": "createOnly", "input": [{"email": known}, {"email": _email("new")}]})
    assert body["result"][0] == {
        "status": "skipped",
        "reasons": [{"code": "1005", "message": "Lead already exists"}],
    }
    assert body["result"][1]["status"] == "created"

    body = api.post(LEADS, {"action": "updateOnly", "input": [{"email": _email("ghost")}, {"email": known}]})
    assert body["result"][0] == {
        "status": "skipped",
        "reasons": [{"code": "1004", "message": "Lead not found"}],
    }
    assert body["result"][1]["status"] == "updated"


def test_multiple_matches_are_skipped_with_1007(api: Api) -> None:
    dup = _email("dup")
    body = api.post(LEADS, {"action": "createDuplicate", "input": [{"email": dup}, {"email": dup}]})
    assert [r["status"] for r in body["result"]] == ["created", "created"]
    body = api.post(LEADS, {"input": [{"email": dup, "firstName": "X"}]})
    assert body["result"][0]["reasons"][0]["code"] == "1007"


def test_bad_records_are_skipped_and_named_while_good_ones_are_written(api: Api) -> None:
    good = _email("good")
    body = api.post(
        LEADS,
        {
            "input": [
                {"email": "not-an-email"},
                {"email": _email("x"), "noSuchField": 1},
                {"firstName": "no lookup value"},
                {"email": _email("y"), "leadScore": "high"},
                {
                    "email": good,
                    "msdRecordId": str(uuid.uuid4()),
                    "msdType": "Contact",
                    "msdIsDeleted": False,
                },
                {"email": _email("z"), "updatedAt": "2024-01-01T00:00:00Z"},
            ]
        },
    )
    assert body["success"] is True
    reasons = [r.get("reasons", [{}])[0] for r in body["result"]]
    assert reasons[0]["code"] == "1001"
    assert "'email'" in reasons[0]["message"]
    assert reasons[1] == {"code": "1006", "message": "Field 'noSuchField' not found"}
    assert reasons[2]["code"] == "1002"
    assert "'email'" in reasons[2]["message"]
    assert reasons[3]["code"] == "1001"
    assert "'leadScore'" in reasons[3]["message"]
    assert body["result"][4]["status"] == "created"
    assert reasons[5]["code"] == "1003"
    assert "updatedAt" in reasons[5]["message"]


def test_lookup_by_sync_owned_key_and_id_rules(api: Api) -> None:
    person = str(uuid.uuid4())
    first = api.post(LEADS, {"input": [{"email": _email("p"), "externalPersonId": person}]})["result"][0]
    body = api.post(
        LEADS,
        {"lookupField": "externalPersonId", "input": [{"externalPersonId": person.upper(), "title": "CTO"}]},
    )
    assert body["result"] == [{"id": first["id"], "status": "updated"}]
    body = api.post(
        LEADS,
        {
            "action": "updateOnly",
            "lookupField": "id",
            "input": [{"id": first["id"], "city": "Oslo"}, {"id": 10**9, "city": "Rome"}],
        },
    )
    assert body["result"][0]["status"] == "updated"
    assert body["result"][1]["reasons"][0]["code"] == "1004"
    body = api.post(LEADS, {"action": "createOrUpdate", "lookupField": "id", "input": [{"id": first["id"]}]})
    assert error_code(body) == "1003"


def test_more_than_300_records_rejects_the_call(api: Api) -> None:
    body = api.post(LEADS, {"input": [{"email": f"r{i}@example.com"} for i in range(301)]})
    assert error_code(body) == "1003"
    assert api.get(LEADS, filterType="email", filterValues="r0@example.com")["result"] == []


def test_filter_by_id_pages_every_record_exactly_once(api: Api) -> None:
    ids = list(range(1, 201))  # the module's seed made leads 1..200
    seen: list[int] = []
    params = {"filterType": "id", "filterValues": ",".join(map(str, ids)), "batchSize": 70, "fields": "id"}
    while True:
        body = api.get(LEADS, **params)
        seen.extend(r["id"] for r in body["result"])
        if not body.get("moreResult"):
            assert "nextPageToken" not in body
            break
        params["nextPageToken"] = body["nextPageToken"]
    assert seen == ids


def test_post_method_get_override_and_repeated_fields(api: Api) -> None:
    resp = api.call(
        "POST",
        LEADS,
        params={"_method": "GET"},
        data=[("filterType", "id"), ("filterValues", "1,2"), ("fields", "id"), ("fields", "email")],
    )
    body = resp.json()
    assert [sorted(r) for r in body["result"]] == [["email", "id"], ["email", "id"]]


def test_too_many_matches_gives_1003_and_unknown_fields_1006(api: Api) -> None:
    assert error_code(api.get(LEADS, filterType="leadPartitionId", filterValues="1")) is None  # 200+ leads
    api.emu.admin("PUT", "limits", json={"max_filter_matches": 50})
    assert error_code(api.get(LEADS, filterType="leadPartitionId", filterValues="1")) == "1003"
    assert error_code(api.get(LEADS, filterType="id", filterValues="1", fields="bogus")) == "1006"
    assert error_code(api.get(LEADS, filterType="firstName", filterValues="Ann")) == "1011"


def test_get_by_id_and_delete(api: Api) -> None:
    lead_id = api.post(LEADS, {"input": [{"email": _email("del"), "firstName": "Del"}]})["result"][0]["id"]
    assert api.get(f"/rest/v1/lead/{lead_id}.json", fields="firstName")["result"] == [{"firstName": "Del"}]
    body = api.post("/rest/v1/leads/delete.json", {"input": [{"id": lead_id}, {"id": 10**9}]})
    assert body["result"][0] == {"id": lead_id, "status": "deleted"}
    assert body["result"][1]["reasons"][0]["code"] == "1004"
    assert api.get(f"/rest/v1/lead/{lead_id}.json")["result"] == []


def test_describe_lists_mapping_and_sync_owned_fields(api: Api) -> None:
    names = {f["rest"]["name"] for f in api.get("/rest/v1/leads/describe.json")["result"]}
    assert {
        "email",
        "firstName",
        "msdType",
        "msdRecordId",
        "msdCreatedDate",
        "msdIsDeleted",
        "externalPersonId",
        "doNotCall",
        "unsubscribed",
    } <= names
    d2 = api.get("/rest/v1/leads/describe2.json")["result"][0]
    assert ["externalPersonId"] in d2["searchableFields"]
    assert {f["name"]: f["updateable"] for f in d2["fields"]}["createdAt"] is False


def test_unknown_paths_and_methods_answer_610_and_605(api: Api) -> None:
    assert error_code(api.get("/rest/v1/nothing.json")) == "610"
    assert error_code(api.get("/rest/v1/leads/delete.json")) == "605"
