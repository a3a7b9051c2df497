"""Companies, opportunities, roles, sales persons and the demo custom object."""

from __future__ import annotations

import uuid

from tests.emulators.marketo.conftest import Api, error_code


def _key() -> str:
    return str(uuid.uuid4())


def test_company_sync_get_delete_with_seq_and_codes(api: Api) -> None:
    k1, k2 = _key(), _key()
    body = api.post(
        "/rest/v1/companies.json",
        {
            "action": "createOrUpdate",
            "dedupeBy": "dedupeFields",
            "input": [
                {"externalCompanyId": k1, "company": "Acme", "industry": "Retail"},
                {"externalCompanyId": k2, "company": "Globex", "numberOfEmployees": "many"},
                {"externalCompanyId": k1, "company": "Acme again"},
                {"company": "no key"},
            ],
        },
    )
    res = body["result"]
    assert res[0]["seq"] == 0
    assert res[0]["status"] == "created"
    assert isinstance(res[0]["id"], int)
    assert res[1]["seq"] == 1
    assert res[1]["reasons"][0]["code"] == "1001"
    assert res[2] == {
        "seq": 2,
        "status": "skipped",
        "reasons": [{"code": "1036", "message": "Duplicate object found in input"}],
    }
    assert res[3]["seq"] == 3
    assert res[3]["reasons"][0]["code"] == "1002"

    body = api.post("/rest/v1/companies.json", {"action": "createOnly", "input": [{"externalCompanyId": k1}]})
    assert body["result"][0]["reasons"][0]["code"] == "1017"
    body = api.post("/rest/v1/companies.json", {"action": "updateOnly", "input": [{"externalCompanyId": k2}]})
    assert body["result"][0]["reasons"][0]["code"] == "1013"

    got = api.get(
        "/rest/v1/companies.json",
        filterType="externalCompanyId",
        filterValues=k1.upper(),
        fields="company,industry",
    )
    assert got["result"] == [{"seq": 0, "company": "Acme", "industry": "Retail"}]
    body = api.post(
        "/rest/v1/companies/delete.json",
        {"deleteBy": "dedupeFields", "input": [{"externalCompanyId": k1}, {"externalCompanyId": k2}]},
    )
    assert [r["status"] for r in body["result"]] == ["deleted", "skipped"]
    assert api.get("/rest/v1/companies.json", filterType="dedupeFields", filterValues=k1)["result"] == []


def test_opportunity_needs_known_sales_person_and_roles_need_known_targets(api: Api) -> None:
    seller = _key()
    assert (
        api.post(
            "/rest/v1/salespersons.json",
            {"input": [{"externalSalesPersonId": seller, "email": "sam@example.com", "firstName": "Sam"}]},
        )["result"][0]["status"]
        == "created"
    )
    opp = _key()
    body = api.post(
        "/rest/v1/opportunities.json",
        {
            "input": [
                {
                    "externalOpportunityId": opp,
                    "name": "Big deal",
                    "externalSalesPersonId": seller,
                    "amount": 1000,
                },
                {"externalOpportunityId": _key(), "name": "Orphan", "externalSalesPersonId": _key()},
                {"externalOpportunityId": _key()},
            ]
        },
    )
    res = body["result"]
    assert res[0]["status"] == "created"
    assert len(res[0]["marketoGUID"]) == 36
    assert res[1]["reasons"][0]["code"] == "718"
    assert res[2]["reasons"][0]["code"] == "1003"

    lead_id = api.post("/rest/v1/leads.json", {"input": [{"email": f"{opp[:8]}@example.com"}]})["result"][0][
        "id"
    ]
    body = api.post(
        "/rest/v1/opportunities/roles.json",
        {
            "input": [
                {
                    "externalOpportunityId": opp,
                    "leadId": lead_id,
                    "role": "Decision Maker",
                    "isPrimary": True,
                },
                {"externalOpportunityId": opp, "leadId": 10**9, "role": "Influencer"},
            ]
        },
    )
    assert body["result"][0]["status"] == "created"
    assert body["result"][1]["reasons"][0]["code"] == "1013"
    # Compound-key query: POST ..._method=GET with a JSON body, as marketorestpython sends it.
    got = api.post(
        "/rest/v1/opportunities/roles.json",
        {
            "filterType": "dedupeFields",
            "fields": ["isPrimary", "role"],
            "input": [{"externalOpportunityId": opp, "leadId": lead_id, "role": "Decision Maker"}],
        },
        _method="GET",
    )
    assert got["result"] == [{"seq": 0, "isPrimary": True, "role": "Decision Maker"}]
    # Update by system id.
    guid = res[0]["marketoGUID"]
    body = api.post(
        "/rest/v1/opportunities.json",
        {"action": "updateOnly", "dedupeBy": "idField", "input": [{"marketoGUID": guid, "stage": "Won"}]},
    )
    assert body["result"] == [{"seq": 0, "status": "updated", "marketoGUID": guid}]
    body = api.post(
        "/rest/v1/opportunities.json",
        {"action": "createOrUpdate", "dedupeBy": "idField", "input": [{"marketoGUID": guid}]},
    )
    assert error_code(body) == "1003"


def test_custom_object_describe_sync_query_delete(api: Api) -> None:
    listing = api.get("/rest/v1/customobjects.json")["result"]
    assert [o["name"] for o in listing] == ["project_c"]
    desc = api.get("/rest/v1/customobjects/project_c/describe.json")["result"][0]
    assert desc["idField"] == "marketoGUID"
    assert desc["dedupeFields"] == ["externalProjectId"]
    assert desc["relationships"] == [
        {"field": "leadID", "type": "child", "relatedTo": {"name": "Lead", "field": "id"}}
    ]
    person = 4242
    projects = [
        {"externalProjectId": _key(), "projectName": f"p{i}", "budget": i * 10.5, "leadID": str(person)}
        for i in range(5)
    ]
    body = api.post("/rest/v1/customobjects/project_c.json", {"input": projects})
    assert [r["status"] for r in body["result"]] == ["created"] * 5
    seen: list[tuple[str, float, int]] = []
    params = {
        "filterType": "leadID",
        "filterValues": str(person),
        "fields": "externalProjectId,budget,leadID",
        "batchSize": 2,
    }
    while True:
        page = api.get("/rest/v1/customobjects/project_c.json", **params)
        seen.extend((r["externalProjectId"], r["budget"], r["leadID"]) for r in page["result"])
        if not page["moreResult"]:
            break
        params["nextPageToken"] = page["nextPageToken"]
    # The link to a lead id is stored and returned as an integer, whatever the input spelling.
    assert seen == [(p["externalProjectId"], p["budget"], person) for p in projects]
    body = api.post(
        "/rest/v1/customobjects/project_c.json",
        {"input": [{"externalProjectId": _key(), "projectName": "bad link", "leadID": "not-an-id"}]},
    )
    assert body["result"][0]["reasons"][0]["code"] == "1001"
    body = api.post(
        "/rest/v1/customobjects/project_c/delete.json",
        {"input": [{"externalProjectId": projects[0]["externalProjectId"]}]},
    )
    assert body["result"][0]["status"] == "deleted"
    assert (
        error_code(
            api.get("/rest/v1/customobjects/project_c.json", filterType="projectName", filterValues="p1")
        )
        == "1003"
    )
