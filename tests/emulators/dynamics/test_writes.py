"""Writes: create, update, delete, upserts by id and alternate key with If-Match / If-None-Match."""

from __future__ import annotations

import uuid

import pytest


def _id_from(resp):
    return resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def test_create_get_update_delete_keeps_server_columns(dataverse):
    account = dataverse.get("accounts?$select=name&$top=1").json()["value"][0]["accountid"]
    created = dataverse.call(
        "POST",
        "contacts",
        json={
            "firstname": "Ada",
            "lastname": "Lovelace",
            "emailaddress1": "ada.write@example.com",
            "parentcustomerid_account@odata.bind": f"/accounts({account})",
            "new_synctomkto": True,
        },
    )
    assert created.status_code == 204, created.text
    cid = _id_from(created)
    first = dataverse.get(
        f"contacts({cid})?$select=fullname,modifiedon,createdon,versionnumber,"
        "_parentcustomerid_value,_ownerid_value"
    ).json()
    assert first["fullname"] == "Ada Lovelace"
    assert first["_parentcustomerid_value"] == account
    assert first["_ownerid_value"]  # defaults to the calling application user
    assert first["createdon"] == first["modifiedon"]
    updated = dataverse.call(
        "PATCH", f"contacts({cid})", json={"lastname": "King"}, headers={"If-Match": "*"}
    )
    assert updated.status_code == 204
    second = dataverse.get(f"contacts({cid})?$select=fullname,versionnumber,createdon").json()
    assert second["fullname"] == "Ada King"
    assert int(second["versionnumber"]) > int(first["versionnumber"])
    assert second["createdon"] == first["createdon"]
    assert dataverse.call("DELETE", f"contacts({cid})").status_code == 204
    assert dataverse.get(f"contacts({cid})").status_code == 404
    assert dataverse.call("DELETE", f"contacts({cid})").status_code == 404


def test_return_representation_and_client_chosen_id(dataverse):
    chosen = str(uuid.uuid4())
    resp = dataverse.call(
        "POST",
        "leads?$select=fullname,statecode",
        json={"leadid": chosen, "firstname": "Grace", "lastname": "Hopper"},
        headers={"Prefer": "return=representation"},
    )
    assert resp.status_code == 201
    assert resp.json()["leadid"] == chosen
    assert resp.json()["fullname"] == "Grace Hopper"
    assert resp.json()["statecode"] == 0


def test_upsert_by_alternate_key_honours_if_none_match_and_if_match(dataverse):
    key = "contacts(emailaddress1='upsert.key@example.com')"
    missing_update = dataverse.call("PATCH", key, json={"lastname": "Nope"}, headers={"If-Match": "*"})
    assert missing_update.status_code == 404
    created = dataverse.call("PATCH", key, json={"lastname": "First"}, headers={"If-None-Match": "*"})
    assert created.status_code == 204
    cid = _id_from(created)
    again = dataverse.call("PATCH", key, json={"lastname": "Second"}, headers={"If-None-Match": "*"})
    assert again.status_code == 412
    assert again.json()["error"]["message"] == "A record with matching key values already exists."
    row = dataverse.get(f"{key}?$select=lastname,emailaddress1").json()
    assert (row["contactid"], row["lastname"], row["emailaddress1"]) == (
        cid,
        "First",
        "upsert.key@example.com",
    )
    stale = dataverse.call("PATCH", key, json={"lastname": "Stale"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    fresh = dataverse.call("PATCH", key, json={"lastname": "Fresh"}, headers={"If-Match": row["@odata.etag"]})
    assert fresh.status_code == 204
    plain = dataverse.call(
        "PATCH", key, json={"lastname": "Plain"}, headers={"Prefer": "return=representation"}
    )
    assert plain.status_code == 200
    assert plain.json()["lastname"] == "Plain"
    assert (
        dataverse.call(
            "POST", "contacts", json={"lastname": "Dup", "emailaddress1": "UPSERT.key@example.com"}
        ).status_code
        == 412
    )


def test_upsert_by_id_creates_then_updates(dataverse):
    new_id = str(uuid.uuid4())
    made = dataverse.call(
        "PATCH", f"accounts({new_id})", json={"name": "Upserted"}, headers={"Prefer": "return=representation"}
    )
    assert made.status_code == 201
    changed = dataverse.call(
        "PATCH",
        f"accounts({new_id})",
        json={"name": "Upserted again"},
        headers={"Prefer": "return=representation"},
    )
    assert changed.status_code == 200
    assert changed.json()["name"] == "Upserted again"


def test_owner_binds_to_user_or_team_and_customer_to_contact(dataverse):
    team = dataverse.get("teams?$select=name&$top=1").json()["value"][0]["teamid"]
    contact = dataverse.get("contacts?$select=fullname&$top=1").json()["value"][0]["contactid"]
    resp = dataverse.call(
        "POST",
        "opportunities",
        json={
            "name": "Team deal",
            "ownerid@odata.bind": f"/teams({team})",
            "customerid_contact@odata.bind": f"{dataverse.api}/contacts({contact})",
        },
    )
    assert resp.status_code == 204, resp.text
    opp = dataverse.get(
        f"opportunities({_id_from(resp)})?$select=_ownerid_value,_customerid_value",
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert opp["_ownerid_value"] == team
    assert opp["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
    assert opp["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    missing = dataverse.call(
        "POST",
        "opportunities",
        json={
            "name": "x",
            "customerid_account@odata.bind": "/accounts(00000000-0000-0000-0000-0000000000aa)",
        },
    )
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"lastname": "x", "nosuchfield": 1}, 400, "The property 'nosuchfield' does not exist"),
        ({"lastname": 5}, 400, "column 'lastname': expected a string"),
        ({"lastname": "x", "leadsourcecode": 99}, 400, "outside the valid range"),
        ({"lastname": "x", "donotemail": "yes"}, 400, "column 'donotemail': expected true or false"),
        (
            {
                "lastname": "x",
                "parentaccountid@odata.bind": "/contacts(00000000-0000-0000-0000-000000000001)",
            },
            400,
            "cannot bind a contact",
        ),
    ],
)
def test_bad_bodies_name_the_record_and_field(dataverse, body, status, needle):
    resp = dataverse.call("POST", "leads", json=body)
    assert resp.status_code == status
    assert needle in resp.json()["error"]["message"]


def test_team_membership_associate_and_disassociate(dataverse):
    team = dataverse.call("POST", "teams", json={"name": "Membership test team", "teamtype": 0})
    tid = _id_from(team)
    user = dataverse.get("systemusers?$select=fullname&$top=1").json()["value"][0]["systemuserid"]
    ref = {"@odata.id": f"{dataverse.api}/systemusers({user})"}
    assert (
        dataverse.call("POST", f"teams({tid})/teammembership_association/$ref", json=ref).status_code == 204
    )
    members = dataverse.get(f"teams({tid})/teammembership_association?$select=fullname").json()["value"]
    assert [m["systemuserid"] for m in members] == [user]
    gone = dataverse.call("DELETE", f"teams({tid})/teammembership_association({user})/$ref")
    assert gone.status_code == 204
    assert dataverse.get(f"teams({tid})/teammembership_association").json()["value"] == []
