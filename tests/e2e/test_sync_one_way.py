"""One-way entities besides accounts: system users become Marketo sales persons."""

from __future__ import annotations

from collections.abc import Callable

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
