"""One-way entities besides accounts: system users become Marketo sales persons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import SyncEnv, write_calls

pytestmark = pytest.mark.e2e


def test_users_become_sales_persons_and_a_quiet_run_writes_nothing(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    user = new_guid()
    dyn = sync_env.dyn()
    try:
        row = {
            "systemuserid": user,
            "firstname": "Sam",
            "lastname": "Seller",
            "internalemailaddress": "sam@corp.example",
        }
        assert all(
            r.ok for r in dyn.upsert_records("systemusers", [row], ["systemuserid"], id_column="systemuserid")
        )
    finally:
        dyn.close()

    sync_env.run("sync_user")

    mkto = sync_env.mkto()
    try:
        fields = ["externalSalesPersonId", "firstName", "lastName", "email"]
        pages = mkto.query_objects("salespersons", "externalSalesPersonId", [user], fields)
        (person,) = [p for page in pages for p in page]
    finally:
        mkto.close()
    assert (person["firstName"], person["lastName"], person["email"]) == ("Sam", "Seller", "sam@corp.example")
    sync_env.reset_stats()
    sync_env.run("sync_user")
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}


def test_account_owner_resolves_to_the_synced_sales_person(
    sync_env: SyncEnv, new_guid: Callable[[], str]
) -> None:
    user, account = new_guid(), new_guid()
    dyn = sync_env.dyn()
    try:
        row = {"systemuserid": user, "lastname": "Owner", "internalemailaddress": "owner@corp.example"}
        assert all(
            r.ok for r in dyn.upsert_records("systemusers", [row], ["systemuserid"], id_column="systemuserid")
        )
        acct = {"accountid": account, "name": "Owned Inc", "ownerid@odata.bind": f"/systemusers({user})"}
        assert all(r.ok for r in dyn.upsert_records("accounts", [acct], ["accountid"], id_column="accountid"))
    finally:
        dyn.close()

    sync_env.run("sync_user")
    sync_env.run("sync_account")

    mkto = sync_env.mkto()
    try:
        fields = ["externalCompanyId", "company", "externalSalesPersonId"]
        pages = mkto.query_objects("companies", "externalCompanyId", [account], fields)
        (company,) = [c for page in pages for c in page]
    finally:
        mkto.close()
    assert company["externalSalesPersonId"] == user


def via_contact_all(
    opportunities: list[dict[str, Any]], contact_ids: set[str], synced: dict[str, Any]
) -> list[dict[str, Any]]:
    """Synced opportunities whose customer is a contact."""
    return [
        o for o in opportunities if o["opportunityid"] in synced and o["_customerid_value"] in contact_ids
    ]


def _rows(env: SyncEnv, entity_set: str, select: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    hook = env.dyn()
    try:
        return [r for page in hook.query(entity_set, select=select, **kwargs) for r in page]
    finally:
        hook.close()


def _objects(
    env: SyncEnv, path: str, key: str, ids: list[str], fields: list[str]
) -> dict[str, dict[str, Any]]:
    hook = env.mkto()
    try:
        return {o[key]: o for page in hook.query_objects(path, key, ids, fields) for o in page}
    finally:
        hook.close()


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 300}], indirect=True)
def test_one_way_entities_in_dependency_order_on_a_seeded_org(sync_env: SyncEnv) -> None:
    order = ["sync_user", "sync_team", "sync_account", "sync_contact", "sync_opportunity"]
    for dag_id in order:
        sync_env.run(dag_id)

    teams = _rows(sync_env, "teams", ["teamid"], expand="teammembership_association($select=systemuserid)")
    persons = _objects(
        sync_env,
        "salespersons",
        "externalSalesPersonId",
        [t["teamid"] for t in teams],
        ["externalSalesPersonId", "msdTeamMembers"],
    )
    for team in teams:
        members = sorted(m["systemuserid"] for m in team["teammembership_association"])
        assert persons[team["teamid"]].get("msdTeamMembers") == (";".join(members) or None)

    lookup = "Microsoft.Dynamics.CRM.lookuplogicalname"
    accounts = _rows(sync_env, "accounts", ["accountid", "new_synctomkto"])
    synced_accounts = {a["accountid"] for a in accounts if a["new_synctomkto"] is not False}
    contacts = _rows(sync_env, "contacts", ["contactid", "_parentcustomerid_value"], annotations=lookup)
    parent = {
        c["contactid"]: c["_parentcustomerid_value"]
        for c in contacts
        if c.get(f"_parentcustomerid_value@{lookup}") == "account"
    }
    opportunities = _rows(
        sync_env,
        "opportunities",
        ["opportunityid", "_customerid_value", "new_synctomkto"],
        annotations=lookup,
    )
    expected = {}
    for opp in opportunities:
        if opp["new_synctomkto"] is False:
            continue
        customer = opp["_customerid_value"]
        company = customer if opp.get(f"_customerid_value@{lookup}") == "account" else parent.get(customer)
        expected[opp["opportunityid"]] = company if company in synced_accounts else None
    synced = _objects(
        sync_env,
        "opportunities",
        "externalOpportunityId",
        [o["opportunityid"] for o in opportunities],
        ["externalOpportunityId", "externalCompanyId"],
    )
    assert expected, "the seeded org has opportunities that pass the sync filter"
    assert {k: v.get("externalCompanyId") for k, v in synced.items()} == expected
    via_contact = [
        o for o in opportunities if o["opportunityid"] in expected and o["_customerid_value"] in parent
    ]
    assert any(expected[o["opportunityid"]] for o in via_contact), "a contact customer's parent account"

    # A contact customer with a Marketo person gives its opportunity a role.
    contact_ids = {c["contactid"] for c in contacts}
    with_contact = [o["opportunityid"] for o in via_contact_all(opportunities, contact_ids, expected)]
    people = _objects(
        sync_env,
        "leads",
        "externalPersonId",
        [o["_customerid_value"] for o in opportunities],
        ["id", "externalPersonId"],
    )
    roles = _objects(
        sync_env,
        "opportunities/roles",
        "externalOpportunityId",
        with_contact,
        ["externalOpportunityId", "leadId", "role"],
    )
    customer = {o["opportunityid"]: o["_customerid_value"] for o in opportunities}
    expected_roles = {o: people[customer[o]]["id"] for o in with_contact if customer[o] in people}
    assert expected_roles, "some opportunities have a contact customer with a person"
    assert {o: (r["leadId"], r["role"]) for o, r in roles.items()} == {
        o: (lead_id, "Customer") for o, lead_id in expected_roles.items()
    }

    sync_env.reset_stats()
    for dag_id in order:
        sync_env.run(dag_id)
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}
