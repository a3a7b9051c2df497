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


def test_sdk_reads_table_metadata_and_adds_columns_and_a_key(sdk):
    info = sdk.tables.get("new_project")
    assert (info["table_logical_name"], info["entity_set_name"]) == ("new_project", "new_projects")
    assert sdk.tables.add_columns("new_project", {"new_Rating": "int", "new_Approved": "bool"}) == [
        "new_Rating",
        "new_Approved",
    ]
    columns = {
        c["LogicalName"]: c
        for c in sdk.tables.list_columns("new_project", select=["LogicalName", "AttributeType"])
    }
    assert (columns["new_rating"]["AttributeType"], columns["new_approved"]["AttributeType"]) == (
        "Integer",
        "Boolean",
    )
    new_id = sdk.records.create(
        "new_project", {"new_name": "SDK rated", "new_rating": 4, "new_approved": True}
    )
    fetched = sdk.records.retrieve("new_project", new_id, select=["new_rating", "new_approved"])
    assert (fetched["new_rating"], fetched["new_approved"]) == (4, True)
    key = sdk.tables.create_alternate_key(
        "new_project", "new_rating_key", ["new_rating"], display_name="Rating"
    )
    keys = {k.schema_name: k for k in sdk.tables.get_alternate_keys("new_project")}
    assert keys["new_rating_key"].metadata_id == key.metadata_id
    assert (keys["new_rating_key"].key_attributes, keys["new_rating_key"].status) == (
        ["new_rating"],
        "Active",
    )
