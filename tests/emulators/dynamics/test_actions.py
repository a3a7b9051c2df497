"""QualifyLead and Merge: the records they write, their refusals, and change tracking seeing them.

The actions are called over plain HTTP (the Dataverse SDK has no call for them); what they wrote
is read back with Microsoft's SDK (independent of our hooks) and through a delta link.
"""

from __future__ import annotations

from typing import Any

import pytest

QUALIFY = "Microsoft.Dynamics.CRM.QualifyLead"
TRACK = "odata.track-changes"


def _create(dv: Any, entity_set: str, body: dict[str, Any]) -> str:
    resp = dv.call("POST", entity_set, json=body)
    assert resp.status_code == 204, resp.text
    return str(resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))


def _delta(dv: Any, entity_set: str, select: str) -> str:
    _, last = dv.read_all(f"{entity_set}?$select={select}", page=500, prefer=TRACK)
    return str(last["@odata.deltaLink"])


def _merge(dv: Any, table: str, key: str, target: str, subordinate: str, **extra: Any) -> Any:
    """``POST Merge`` of two records of ``table`` (``extra``: UpdateContent...)."""
    kind = f"Microsoft.Dynamics.CRM.{table}"
    body = {
        "Target": {"@odata.type": kind, key: target},
        "Subordinate": {"@odata.type": kind, key: subordinate},
    }
    return dv.call("POST", "Merge", json={**body, **extra})


def _changed(dv: Any, link: str, key: str) -> set[str]:
    rows, _ = dv.read_all(link, page=500)
    return {r[key] for r in rows if key in r}


def test_qualify_lead_creates_the_contact_account_and_opportunity_it_is_asked_for(
    dataverse: Any, sdk: Any
) -> None:
    lead = _create(
        dataverse,
        "leads",
        {
            "firstname": "Quinn",
            "lastname": "Qualified",
            "emailaddress1": "quinn@qualify.test",
            "companyname": "Qualify Ltd",
            "subject": "Big deal",
        },
    )
    contacts_link = _delta(dataverse, "contacts", "fullname")
    leads_link = _delta(dataverse, "leads", "statecode")

    resp = dataverse.call(
        "POST",
        f"leads({lead})/{QUALIFY}",
        json={"CreateAccount": True, "CreateContact": True, "CreateOpportunity": True, "Status": 3},
    )

    assert resp.status_code == 200, resp.text
    created = {r["@odata.type"].rsplit(".", 1)[-1]: r for r in resp.json()["value"]}
    assert set(created) == {"account", "contact", "opportunity"}
    contact = sdk.records.retrieve(
        "contact",
        created["contact"]["contactid"],
        select=[
            "firstname",
            "lastname",
            "emailaddress1",
            "_originatingleadid_value",
            "_parentcustomerid_value",
        ],
    )
    assert (contact["firstname"], contact["lastname"], contact["emailaddress1"]) == (
        "Quinn",
        "Qualified",
        "quinn@qualify.test",
    )
    assert contact["_originatingleadid_value"] == lead
    assert contact["_parentcustomerid_value"] == created["account"]["accountid"]
    account = sdk.records.retrieve("account", created["account"]["accountid"], select=["name"])
    assert account["name"] == "Qualify Ltd"
    qualified = sdk.records.retrieve(
        "lead", lead, select=["statecode", "statuscode", "_qualifyingopportunityid_value"]
    )
    assert (qualified["statecode"], qualified["statuscode"]) == (1, 3)
    assert qualified["_qualifyingopportunityid_value"] == created["opportunity"]["opportunityid"]
    assert created["contact"]["contactid"] in _changed(dataverse, contacts_link, "contactid")
    assert lead in _changed(dataverse, leads_link, "leadid")

    again = dataverse.call("POST", f"leads({lead})/{QUALIFY}", json={"CreateContact": True, "Status": 3})
    assert again.status_code == 400
    assert "closed" in again.json()["error"]["message"]


def test_qualify_lead_without_a_contact_and_with_a_bad_status(dataverse: Any) -> None:
    lead = _create(dataverse, "leads", {"lastname": "Only", "subject": "s"})
    bad = dataverse.call("POST", f"leads({lead})/{QUALIFY}", json={"CreateContact": True, "Status": 4})
    assert bad.status_code == 400
    resp = dataverse.call(
        "POST", f"leads({lead})/{QUALIFY}", json={"CreateAccount": False, "CreateContact": False, "Status": 3}
    )
    assert resp.status_code == 200
    assert resp.json()["value"] == []


@pytest.mark.parametrize(
    ("entity_set", "table", "key"), [("contacts", "contact", "contactid"), ("leads", "lead", "leadid")]
)
def test_merge_deactivates_the_subordinate_and_updates_the_target(
    dataverse: Any,
    sdk: Any,
    entity_set: str,
    table: str,
    key: str,
) -> None:
    target = _create(dataverse, entity_set, {"lastname": "Target", "jobtitle": None})
    subordinate = _create(dataverse, entity_set, {"lastname": "Subordinate", "jobtitle": "CFO"})
    link = _delta(dataverse, entity_set, "lastname")

    update = {"@odata.type": f"Microsoft.Dynamics.CRM.{table}", "jobtitle": "CFO"}
    resp = _merge(
        dataverse, table, key, target, subordinate, UpdateContent=update, PerformParentingChecks=False
    )

    assert resp.status_code == 204, resp.text
    merged = sdk.records.retrieve(table, subordinate, select=["merged", "_masterid_value", "statecode"])
    assert (merged["merged"], merged["_masterid_value"]) == (True, target)
    assert merged["statecode"] != 0, "the subordinate is deactivated"
    assert sdk.records.retrieve(table, target, select=["jobtitle"])["jobtitle"] == "CFO"
    assert {target, subordinate} <= _changed(dataverse, link, key)

    twice = _merge(dataverse, table, key, target, subordinate)
    assert twice.status_code == 400
    assert "already merged" in twice.json()["error"]["message"]
