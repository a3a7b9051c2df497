"""Reading: $select, $filter, $orderby, $top, $count and server-driven paging."""

from __future__ import annotations

import pytest

from tests.emulators.dynamics.conftest import SEED_LEADS


def test_paging_returns_every_record_exactly_once(dataverse):
    rows, last = dataverse.read_all("leads?$select=lastname", page=7)
    ids = [r["leadid"] for r in rows]
    assert len(ids) == SEED_LEADS
    assert len(set(ids)) == SEED_LEADS
    assert "@odata.deltaLink" not in last
    single = dataverse.get("leads?$select=lastname", headers={"Prefer": "odata.maxpagesize=5000"}).json()
    assert {r["leadid"] for r in single["value"]} == set(ids)


def test_page_size_is_echoed_and_capped_at_5000(dataverse):
    resp = dataverse.get("leads?$select=lastname", headers={"Prefer": "odata.maxpagesize=9999"})
    assert resp.headers["Preference-Applied"] == "odata.maxpagesize=5000"
    assert resp.headers["OData-Version"] == "4.0"


def test_ordered_paging_keeps_order_and_sees_each_row_once(dataverse):
    rows, _ = dataverse.read_all("contacts?$select=lastname,contactid&$orderby=lastname desc", page=13)
    names = [(r["lastname"] or "").lower() for r in rows]
    assert names == sorted(names, reverse=True)
    assert len({r["contactid"] for r in rows}) == len(rows) == SEED_LEADS // 2


def test_sync_filter_ne_false_keeps_unset_and_true_rows(dataverse):
    everything, _ = dataverse.read_all("leads?$select=new_synctomkto", page=5000)
    flags = [r["new_synctomkto"] for r in everything]
    assert {None, True, False} <= set(flags)  # the seed has all three states
    expected = {r["leadid"] for r in everything if r["new_synctomkto"] is not False}
    kept, _ = dataverse.read_all("leads?$select=new_synctomkto&$filter=new_synctomkto ne false", page=50)
    assert {r["leadid"] for r in kept} == expected


def test_filter_with_and_or_parentheses_functions_and_dates(dataverse):
    everything, _ = dataverse.read_all("leads?$select=lastname,statecode,modifiedon,emailaddress1", page=5000)
    pivot = sorted(r["modifiedon"] for r in everything)[len(everything) // 2]
    expr = (
        f"(statecode eq 0 or statecode eq 2) and modifiedon ge {pivot} and "
        "(startswith(lastname,'m') or contains(emailaddress1,'son'))"
    )
    got, _ = dataverse.read_all(f"leads?$select=lastname&$filter={expr}", page=40)
    expected = {
        r["leadid"]
        for r in everything
        if r["statecode"] in (0, 2)
        and r["modifiedon"] >= pivot
        and ((r["lastname"] or "").lower().startswith("m") or "son" in (r["emailaddress1"] or "").lower())
    }
    assert expected  # the seed is large enough for this to be a real check
    assert {r["leadid"] for r in got} == expected


def test_lookup_filter_and_annotations(dataverse):
    contact = dataverse.get(
        "contacts?$select=_parentcustomerid_value&$filter=_parentcustomerid_value ne null&$top=1",
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()["value"][0]
    account_id = contact["_parentcustomerid_value"]
    assert contact["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    same = dataverse.get(f"contacts?$select=fullname&$filter=_parentcustomerid_value eq {account_id}").json()
    assert contact["contactid"] in {r["contactid"] for r in same["value"]}
    lead = dataverse.get(
        "leads?$select=statuscode,_ownerid_value&$top=1", headers={"Prefer": 'odata.include-annotations="*"'}
    ).json()["value"][0]
    assert lead["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] in ("systemuser", "team")
    assert isinstance(lead["statuscode@OData.Community.Display.V1.FormattedValue"], str)


def test_top_count_and_count_segment(dataverse):
    top = dataverse.get("leads?$select=lastname&$top=4&$count=true").json()
    assert len(top["value"]) == 4
    assert "@odata.nextLink" not in top
    assert top["@odata.count"] == SEED_LEADS
    bare = dataverse.get("leads/$count")
    assert bare.text == str(SEED_LEADS)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("leads?$select=nosuchcolumn", "Could not find a property named 'nosuchcolumn'"),
        ("leads?$filter=nosuch eq 1", "Could not find a property named 'nosuch'"),
        ("leads?$filter=lastname eq", "Unexpected end"),
        ("leads?$orderby=lastname sideways", "Bad $orderby"),
    ],
)
def test_bad_queries_get_odata_errors(dataverse, query, needle):
    resp = dataverse.get(query)
    assert resp.status_code == 400
    assert needle in resp.json()["error"]["message"]


def test_single_record_get_etag_and_not_modified(dataverse):
    lead = dataverse.get("leads?$select=lastname&$top=1").json()["value"][0]
    one = dataverse.get(f"leads({lead['leadid']})?$select=lastname,emailaddress1")
    assert one.status_code == 200
    assert one.json()["@odata.etag"] == lead["@odata.etag"]
    assert one.json()["@odata.context"].endswith("/$entity")
    cached = dataverse.get(
        f"leads({lead['leadid']})?$select=lastname", headers={"If-None-Match": lead["@odata.etag"]}
    )
    assert cached.status_code == 304
    missing = dataverse.get("leads(00000000-0000-0000-0000-000000000001)")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "0x80040217"


def test_team_membership_navigation_and_expand(dataverse):
    team = dataverse.get("teams?$select=name&$top=1").json()["value"][0]
    members = dataverse.get(f"teams({team['teamid']})/teammembership_association?$select=fullname").json()[
        "value"
    ]
    assert members
    user_id = members[0]["systemuserid"]
    back = dataverse.get(f"systemusers({user_id})/teammembership_association?$select=name").json()["value"]
    assert team["teamid"] in {t["teamid"] for t in back}
    expanded = dataverse.get(
        f"teams({team['teamid']})?$select=name&$expand=teammembership_association($select=fullname)"
    )
    assert {m["systemuserid"] for m in expanded.json()["teammembership_association"]} == {
        m["systemuserid"] for m in members
    }


def test_metadata_describes_tables_and_columns(dataverse):
    defs = dataverse.get(
        "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute"
        "&$filter=LogicalName eq 'new_project'"
    ).json()["value"]
    assert [(d["EntitySetName"], d["PrimaryIdAttribute"]) for d in defs] == [
        ("new_projects", "new_projectid")
    ]
    attrs = dataverse.get(
        "EntityDefinitions(LogicalName='contact')/Attributes?$select=LogicalName,AttributeType"
    )
    by_name = {a["LogicalName"]: a["AttributeType"] for a in attrs.json()["value"]}
    assert by_name["parentcustomerid"] == "Customer"
    assert by_name["new_synctomkto"] == "Boolean"
    assert by_name["ownerid"] == "Owner"
    keys = dataverse.get("EntityDefinitions(LogicalName='contact')/Keys").json()["value"]
    assert [k["KeyAttributes"] for k in keys] == [["emailaddress1"]]
    picklists = dataverse.get(
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM."
        "PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options)"
    )
    sources = {a["LogicalName"]: a for a in picklists.json()["value"]}["leadsourcecode"]
    labels = {o["Value"]: o["Label"]["LocalizedLabels"][0]["Label"] for o in sources["OptionSet"]["Options"]}
    assert labels[8] == "Web"
    service = dataverse.get("").json()
    assert {"leads", "contacts", "accounts", "opportunities", "systemusers", "teams", "new_projects"} <= {
        s["name"] for s in service["value"]
    }
    assert '<EntitySet Name="leads"' in dataverse.get("$metadata").text


def test_lookup_expansion_follows_the_stored_target(dataverse):
    # opportunity.yaml derives a contact customer's company from
    # $expand=customerid_contact($select=_parentcustomerid_value).
    def create(entity_set: str, body: dict[str, object]) -> str:
        resp = dataverse.call("POST", entity_set, json=body)
        assert resp.status_code == 204, resp.text
        return resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")

    account = create("accounts", {"name": "Expand parent"})
    contact = create(
        "contacts",
        {"lastname": "Expand child", "parentcustomerid_account@odata.bind": f"/accounts({account})"},
    )
    via_contact = create(
        "opportunities",
        {"name": "Expand via contact", "customerid_contact@odata.bind": f"/contacts({contact})"},
    )
    via_account = create(
        "opportunities",
        {"name": "Expand via account", "customerid_account@odata.bind": f"/accounts({account})"},
    )
    resp = dataverse.get(
        "opportunities?$select=name&$filter=startswith(name,'Expand via')"
        "&$expand=customerid_contact($select=_parentcustomerid_value)"
    )
    assert resp.status_code == 200, resp.text
    rows = {r["opportunityid"]: r for r in resp.json()["value"]}
    assert rows[via_contact]["customerid_contact"]["contactid"] == contact
    assert rows[via_contact]["customerid_contact"]["_parentcustomerid_value"] == account
    assert rows[via_account]["customerid_contact"] is None  # the customer is an account
    one = dataverse.get(
        f"contacts({contact})?$select=lastname&$expand=parentcustomerid_account($select=name)"
    )
    assert one.json()["parentcustomerid_account"]["name"] == "Expand parent"
    bad = dataverse.get("opportunities?$select=name&$expand=nosuchnavigation")
    assert bad.status_code == 400
