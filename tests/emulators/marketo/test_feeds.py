"""Activity paging tokens, lead changes and deleted leads: exactly the changes since a token."""

from __future__ import annotations

import uuid
from typing import Any

from tests.emulators.marketo.conftest import Api, error_code

LEADS = "/rest/v1/leads.json"


def _drain(api: Api, path: str, token: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
    records: list[dict[str, Any]] = []
    while True:
        body = api.get(path, nextPageToken=token, **params)
        assert body["success"], body
        assert "nextPageToken" in body  # always returned, also on the last page
        records.extend(body.get("result", []))
        token = body["nextPageToken"]
        if not body["moreResult"]:
            return records, token


def _token_now(api: Api) -> str:
    return str(
        api.get("/rest/v1/activities/pagingtoken.json", sinceDatetime="2100-01-01T00:00:00Z")["nextPageToken"]
    )


def test_lead_changes_return_exactly_the_changes_since_the_token(api: Api) -> None:
    token = _token_now(api)
    email = f"feed-{uuid.uuid4().hex[:8]}@example.com"
    lead_id = api.post(LEADS, {"input": [{"email": email, "firstName": "Old"}]})["result"][0]["id"]
    api.post(LEADS, {"input": [{"email": email, "firstName": "New", "city": "Paris"}]})
    api.post(LEADS, {"input": [{"email": email, "firstName": "New"}]})  # no change: no activity

    changes, token = _drain(
        api, "/rest/v1/activities/leadchanges.json", token, fields="firstName", batchSize=1
    )
    assert [(c["activityTypeId"], c["leadId"]) for c in changes] == [(12, lead_id), (13, lead_id)]
    assert changes[1]["fields"] == [
        {"id": changes[1]["fields"][0]["id"], "name": "firstName", "newValue": "New", "oldValue": "Old"}
    ]
    assert {"name": "Reason", "value": "Web service API"} in changes[1]["attributes"]

    api.post(LEADS, {"input": [{"email": email, "lastName": "Later"}]})
    later, _ = _drain(api, "/rest/v1/activities/leadchanges.json", token, fields="firstName,lastName")
    assert [(c["activityTypeId"], c["fields"][0]["name"]) for c in later] == [(13, "lastName")]
    # The same token read again gives the same answer: tokens are positions, not consumed.
    again, _ = _drain(api, "/rest/v1/activities/leadchanges.json", token, fields="firstName,lastName")
    assert again == later


def test_paging_token_from_a_date_includes_later_activities(api: Api) -> None:
    # A lead of its own: on a parallel worker this may be the module's first test.
    api.post(LEADS, {"input": [{"email": f"dated-{uuid.uuid4().hex[:8]}@example.com"}]})
    token = api.get("/rest/v1/activities/pagingtoken.json", sinceDatetime="2000-01-01T00:00:00+00:00")
    assert token["success"]
    assert "result" not in token
    records, _ = _drain(api, "/rest/v1/activities.json", token["nextPageToken"], activityTypeIds="12")
    assert records
    assert all(r["activityTypeId"] == 12 for r in records)
    assert [r["id"] for r in records] == sorted({r["id"] for r in records})


def test_deleted_leads_feed(api: Api) -> None:
    token = _token_now(api)
    lead_id = api.post(
        LEADS,
        {
            "input": [
                {"email": f"gone-{uuid.uuid4().hex[:8]}@example.com", "firstName": "Gone", "lastName": "Soon"}
            ]
        },
    )["result"][0]["id"]
    api.post("/rest/v1/leads/delete.json", {"input": [{"id": lead_id}]})
    deleted, _ = _drain(api, "/rest/v1/activities/deletedleads.json", token)
    assert [(d["leadId"], d["activityTypeId"], d["primaryAttributeValue"]) for d in deleted] == [
        (lead_id, 37, "Gone Soon")
    ]


def test_feed_parameter_errors(api: Api) -> None:
    token = _token_now(api)
    assert error_code(api.get("/rest/v1/activities/leadchanges.json", nextPageToken=token)) == "701"
    assert (
        error_code(api.get("/rest/v1/activities.json", nextPageToken="garbage!", activityTypeIds="1"))
        == "1003"
    )
    assert (
        error_code(
            api.get(
                "/rest/v1/activities.json", nextPageToken=token, activityTypeIds=",".join(map(str, range(11)))
            )
        )
        == "1003"
    )
    assert error_code(api.get("/rest/v1/activities/pagingtoken.json", sinceDatetime="yesterday")) == "704"
    types = {t["id"] for t in api.get("/rest/v1/activities/types.json")["result"]}
    assert {12, 13, 37} <= types
