"""Microsoft's Dataverse SDK (powerplatform-dataverse-client) used unchanged against the emulator.

The only glue is ``MsalCredential`` (in this folder's conftest): the SDK takes any azure-core
``TokenCredential`` (an object with ``get_token``), and the emulator's authority is reached
through msal exactly as the sync does. The SDK honours ``REQUESTS_CA_BUNDLE`` for the emulator's
CA (independent-clients.md §5).
"""

from __future__ import annotations

from tests.emulators.dynamics.conftest import SEED_LEADS


def test_sdk_create_get_update_delete(sdk, dataverse):
    new_id = sdk.records.create("account", {"name": "SDK Contoso", "telephone1": "555-0199"})
    fetched = sdk.records.retrieve("account", new_id, select=["name", "telephone1"])
    assert (fetched["name"], fetched["telephone1"]) == ("SDK Contoso", "555-0199")
    sdk.records.update("account", new_id, {"name": "SDK Contoso Renamed"})
    assert sdk.records.retrieve("account", new_id, select=["name"])["name"] == "SDK Contoso Renamed"
    sdk.records.delete("account", new_id)
    assert dataverse.get(f"accounts({new_id})").status_code == 404


def test_sdk_lists_every_lead_through_server_paging(sdk):
    pages = list(sdk.records.list_pages("lead", select=["lastname", "emailaddress1"], page_size=40))
    assert len(pages) == -(-SEED_LEADS // 40)
    ids = [r["leadid"] for page in pages for r in page]
    assert len(ids) == len(set(ids)) == SEED_LEADS


def test_sdk_filtered_list_and_bulk_create(sdk):
    ids = sdk.records.create(
        "new_project", [{"new_name": f"SDK project {i}", "new_code": f"SDK-{i}"} for i in range(3)]
    )
    assert len(ids) == 3
    rows = list(sdk.records.list("new_project", select=["new_code"], filter="startswith(new_code,'SDK-')"))
    assert sorted(r["new_code"] for r in rows) == ["SDK-0", "SDK-1", "SDK-2"]
