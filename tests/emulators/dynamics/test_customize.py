"""Bare mode, change tracking per table, and columns and keys created through the Web API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.dynamics.schema import initial_tables
from tests.emulators.dynamics.conftest import Dataverse, token_for
from tests.support.emulator_procs import RunningEmulator, start_emulator

SEED = 40
FILTER = "new_synctomkto"
TABLES_WITH_FILTER = sorted(name for name, t in initial_tables().items() if FILTER in t.attributes)
INVALID_ARGUMENT = "0x80040203"
DUPLICATE_ATTRIBUTE = "0x80047013"


def label(text: str) -> dict[str, Any]:
    return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}


def boolean_column(schema_name: str, default: bool = True) -> dict[str, Any]:
    """A Two Options column as a set-up tool sends it."""
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
        "AttributeType": "Boolean",
        "SchemaName": schema_name,
        "DisplayName": label("Sync to Marketo"),
        "RequiredLevel": {"Value": "None", "CanBeChanged": True},
        "DefaultValue": default,
        "OptionSet": {
            "TrueOption": {"Value": 1, "Label": label("Yes")},
            "FalseOption": {"Value": 0, "Label": label("No")},
        },
    }


def string_column(schema_name: str, max_length: int = 100) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": schema_name,
        "DisplayName": label(schema_name),
        "MaxLength": max_length,
    }


def start_bare(workdir: Path, seed_scale: int | None = SEED) -> RunningEmulator:
    return start_emulator("dynamics", workdir, ["--limits", "off", "--bare"], seed_scale=seed_scale)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataverse]:
    """A seeded emulator started with ``--bare``, shared by the tests that leave it as it was."""
    emu = start_bare(tmp_path_factory.mktemp("bare"))
    try:
        yield Dataverse(emu, token_for(emu))
    finally:
        emu.stop()


@pytest.fixture
def own_bare(tmp_path: Path) -> Iterator[Callable[[], Dataverse]]:
    """Start a seeded bare emulator of the test's own (for tests that change the sync filter)."""
    started: list[RunningEmulator] = []

    def start() -> Dataverse:
        emu = start_bare(tmp_path / f"bare{len(started)}")
        started.append(emu)
        return Dataverse(emu, token_for(emu))

    yield start
    for emu in started:
        emu.stop()


def column_names(dv: Dataverse, table: str) -> set[str]:
    body = dv.get(f"EntityDefinitions(LogicalName='{table}')/Attributes?$select=LogicalName").json()
    return {a["LogicalName"] for a in body["value"]}


def tracking_enabled(dv: Dataverse, table: str) -> bool:
    body = dv.get(f"EntityDefinitions(LogicalName='{table}')?$select=ChangeTrackingEnabled").json()
    return bool(body["ChangeTrackingEnabled"])


def track(dv: Dataverse, path: str) -> Any:
    return dv.get(path, headers={"Prefer": "odata.track-changes,odata.maxpagesize=5000"})


def set_tracking(dv: Dataverse, table: str, enabled: bool) -> None:
    dv.emu.admin("POST", "schema", json={"entity": table, "change_tracking": enabled})


def error_code(resp: Any) -> str:
    return str(resp.json()["error"]["code"])


# -- bare mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES_WITH_FILTER)
def test_bare_mode_drops_the_sync_filter_column_of_every_table(bare, table):
    assert FILTER not in column_names(bare, table)
    entity_set = initial_tables()[table].entity_set
    assert bare.get(f"{entity_set}?$select={FILTER}&$top=1").status_code == 400


def test_bare_mode_keeps_the_seeded_rows(bare):
    assert bare.get("leads/$count").text == str(SEED)
    assert f'<Property Name="{FILTER}"' not in bare.get("$metadata").text


def test_bare_mode_turns_change_tracking_off_on_the_custom_tables_only(bare):
    assert tracking_enabled(bare, "new_project") is False
    assert tracking_enabled(bare, "new_marketoactivity") is False
    assert tracking_enabled(bare, "lead") is True
    assert tracking_enabled(bare, "campaignresponse") is True


# -- change tracking ---------------------------------------------------------------------------


def test_track_changes_on_a_table_without_change_tracking_is_refused(bare):
    refused = track(bare, "new_projects?$select=new_name")
    assert refused.status_code == 400
    assert error_code(refused) == INVALID_ARGUMENT
    assert "Change tracking is not enabled for table 'new_project'" in refused.json()["error"]["message"]
    assert bare.get("new_projects?$select=new_name").status_code == 200


def test_a_delta_link_is_refused_once_change_tracking_is_off(bare):
    first = track(bare, "opportunities?$select=name")
    delta_link = first.json()["@odata.deltaLink"]
    set_tracking(bare, "opportunity", False)
    try:
        refused = track(bare, delta_link)
        assert refused.status_code == 400
        assert "opportunity" in refused.json()["error"]["message"]
    finally:
        set_tracking(bare, "opportunity", True)
    assert track(bare, delta_link).status_code == 200


@pytest.mark.parametrize("address", ["name", "metadata id"])
def test_putting_the_definition_back_turns_change_tracking_on(bare, address):
    definition = bare.get("EntityDefinitions(LogicalName='new_project')").json()
    key = "LogicalName='new_project'" if address == "name" else definition["MetadataId"]
    definition["ChangeTrackingEnabled"] = True
    try:
        put = bare.call(
            "PUT", f"EntityDefinitions({key})", json=definition, headers={"MSCRM.MergeLabels": "true"}
        )
        assert put.status_code == 204, put.text
        assert tracking_enabled(bare, "new_project") is True
        body = track(bare, "new_projects?$select=new_name").json()
        assert "@odata.deltaLink" in body
        assert len(body["value"]) == bare.get("new_projects/$count").json()
    finally:
        set_tracking(bare, "new_project", False)


def test_change_tracking_cannot_be_turned_off_through_the_api(bare):
    definition = bare.get("EntityDefinitions(LogicalName='lead')").json()
    definition["ChangeTrackingEnabled"] = False
    refused = bare.call("PUT", "EntityDefinitions(LogicalName='lead')", json=definition)
    assert refused.status_code == 400
    assert "cannot be turned off" in refused.json()["error"]["message"]
    assert tracking_enabled(bare, "lead") is True


# -- columns -----------------------------------------------------------------------------------


def test_a_created_boolean_column_is_described_writable_filterable_and_tracked(own_bare):
    dv = own_bare()
    created = dv.call(
        "POST", "EntityDefinitions(LogicalName='lead')/Attributes", json=boolean_column("new_SyncToMkto")
    )
    assert created.status_code == 204, created.text
    meta = dv.get(f"EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='{FILTER}')").json()
    assert created.headers["OData-EntityId"].endswith(
        f"EntityDefinitions(LogicalName='lead')/Attributes({meta['MetadataId']})"
    )
    assert (meta["AttributeType"], meta["SchemaName"], meta["DefaultValue"]) == (
        "Boolean",
        "new_SyncToMkto",
        True,
    )
    assert meta["IsCustomAttribute"] is True
    assert meta["DisplayName"]["UserLocalizedLabel"]["Label"] == "Sync to Marketo"
    assert f'<Property Name="{FILTER}" Type="Edm.Boolean"/>' in dv.get("$metadata").text
    assert dv.get(f"leads/$count?$filter={FILTER} eq null").text == str(SEED)  # rows that existed

    delta_link = track(dv, f"leads?$select=lastname,{FILTER}").json()["@odata.deltaLink"]
    new = dv.call(
        "POST", "leads", json={"lastname": "Defaulted"}, headers={"Prefer": "return=representation"}
    )
    assert new.json()[FILTER] is True  # the column's DefaultValue
    old_id = dv.get("leads?$select=lastname&$top=1").json()["value"][0]["leadid"]
    assert dv.call("PATCH", f"leads({old_id})", json={FILTER: False}).status_code == 204

    opted_out = dv.get(f"leads?$select=leadid&$filter={FILTER} eq false").json()["value"]
    assert [r["leadid"] for r in opted_out] == [old_id]
    assert dv.get(f"leads/$count?$filter={FILTER} ne false").text == str(SEED)
    changes = {r["leadid"]: r[FILTER] for r in track(dv, delta_link).json()["value"]}
    assert changes == {old_id: False, new.json()["leadid"]: True}


def test_creating_a_column_that_exists_is_refused(bare):
    refused = bare.call(
        "POST", "EntityDefinitions(LogicalName='lead')/Attributes", json=string_column("mkt_LeadScore")
    )
    assert refused.status_code == 400
    assert error_code(refused) == DUPLICATE_ATTRIBUTE
    assert "mkt_leadscore" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "definition",
    [
        pytest.param(boolean_column("SyncToMkto"), id="no customization prefix"),
        pytest.param(
            {**string_column("new_Lookup"), "@odata.type": "#Microsoft.Dynamics.CRM.LookupAttributeMetadata"},
            id="type not emulated",
        ),
        pytest.param({"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata"}, id="no SchemaName"),
    ],
)
def test_column_definitions_the_emulator_refuses(bare, definition):
    refused = bare.call("POST", "EntityDefinitions(LogicalName='lead')/Attributes", json=definition)
    assert refused.status_code == 400
    assert error_code(refused) == INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("odata_type", "extra", "value", "stored"),
    [
        ("StringAttributeMetadata", {"MaxLength": 5}, "abcde", "abcde"),
        ("MemoAttributeMetadata", {"MaxLength": 2000}, "a note", "a note"),
        ("IntegerAttributeMetadata", {}, 42, 42),
        ("DateTimeAttributeMetadata", {"Format": "DateOnly"}, "2026-05-01", "2026-05-01"),
        ("DecimalAttributeMetadata", {"Precision": 2}, 12.5, 12.5),
        ("MoneyAttributeMetadata", {"PrecisionSource": 2}, 9.99, 9.99),
        (
            "PicklistAttributeMetadata",
            {
                "OptionSet": {
                    "Options": [
                        {"Value": 100000000, "Label": label("A")},
                        {"Value": 100000001, "Label": label("B")},
                    ]
                }
            },
            100000001,
            100000001,
        ),
    ],
)
def test_created_columns_of_other_types_take_values(bare, odata_type, extra, value, stored):
    name = f"new_{odata_type.removesuffix('AttributeMetadata')}Col"
    definition = {"@odata.type": f"Microsoft.Dynamics.CRM.{odata_type}", "SchemaName": name, **extra}
    assert (
        bare.call("POST", "EntityDefinitions(LogicalName='contact')/Attributes", json=definition).status_code
        == 204
    )
    created = bare.call(
        "POST",
        "contacts",
        json={"lastname": "Typed", name.lower(): value},
        headers={"Prefer": "return=representation"},
    )
    assert created.status_code == 201, created.text
    assert created.json()[name.lower()] == stored


def test_a_created_string_column_enforces_its_max_length(bare):
    assert (
        bare.call(
            "POST", "EntityDefinitions(LogicalName='account')/Attributes", json=string_column("new_Short", 3)
        ).status_code
        == 204
    )
    refused = bare.call("POST", "accounts", json={"name": "Too long", "new_short": "abcd"})
    assert refused.status_code == 400
    assert "maximum allowed length of '3'" in refused.json()["error"]["message"]


def test_a_column_created_in_a_rolled_back_change_set_is_not_kept(bare):
    boundary, changeset = f"batch_{uuid.uuid4().hex}", f"changeset_{uuid.uuid4().hex}"
    parts = [
        ("POST", "EntityDefinitions(LogicalName='lead')/Attributes", string_column("new_Ephemeral")),
        ("POST", "leads", {"lastname": "Broken", "nosuchcolumn": 1}),
    ]
    inner = "".join(
        f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        f"Content-ID: {i}\r\n\r\n{method} /api/data/v9.2/{url} HTTP/1.1\r\n"
        f"Content-Type: application/json\r\n\r\n{json.dumps(body)}\r\n"
        for i, (method, url, body) in enumerate(parts, 1)
    )
    body = (
        f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
        f"{inner}--{changeset}--\r\n--{boundary}--\r\n"
    )
    resp = bare.call(
        "POST",
        "$batch",
        data=body.encode(),
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
    )
    assert resp.status_code == 400
    assert "new_ephemeral" not in column_names(bare, "lead")
    assert bare.get("leads?$select=new_ephemeral&$top=1").status_code == 400


# -- alternate keys ----------------------------------------------------------------------------


def test_a_created_alternate_key_is_active_and_addresses_rows(bare):
    assert (
        bare.call(
            "POST", "EntityDefinitions(LogicalName='lead')/Attributes", json=string_column("new_ExternalCode")
        ).status_code
        == 204
    )
    key = {
        "SchemaName": "new_externalcode_key",
        "DisplayName": label("External code"),
        "KeyAttributes": ["new_externalcode"],
    }
    created = bare.call("POST", "EntityDefinitions(LogicalName='lead')/Keys", json=key)
    assert created.status_code == 204, created.text
    keys = bare.get("EntityDefinitions(LogicalName='lead')/Keys").json()["value"]
    (made,) = [k for k in keys if k["SchemaName"] == "new_externalcode_key"]
    assert (made["KeyAttributes"], made["EntityKeyIndexStatus"]) == (["new_externalcode"], "Active")
    assert created.headers["OData-EntityId"].endswith(f"/Keys({made['MetadataId']})")

    assert (
        bare.call("PATCH", "leads(new_externalcode='EXT-1')", json={"lastname": "Keyed"}).status_code == 204
    )
    assert bare.get("leads(new_externalcode='EXT-1')?$select=lastname").json()["lastname"] == "Keyed"
    again = bare.call(
        "POST", "EntityDefinitions(LogicalName='lead')/Keys", json={**key, "SchemaName": "new_other_key"}
    )
    assert again.status_code == 400


def test_a_key_naming_an_unknown_column_is_refused(bare):
    key = {"SchemaName": "new_nothing_key", "KeyAttributes": ["new_nosuchcolumn"]}
    refused = bare.call("POST", "EntityDefinitions(LogicalName='lead')/Keys", json=key)
    assert refused.status_code == 400
    assert "new_nosuchcolumn" in refused.json()["error"]["message"]


def test_a_key_on_duplicate_values_fails_to_build_and_addresses_nothing(bare):
    for _ in range(2):
        assert (
            bare.call("POST", "leads", json={"lastname": "Twin", "jobtitle": "Same title"}).status_code == 204
        )
    key = {"SchemaName": "new_jobtitle_key", "KeyAttributes": ["jobtitle"]}
    assert bare.call("POST", "EntityDefinitions(LogicalName='lead')/Keys", json=key).status_code == 204
    keys = bare.get("EntityDefinitions(LogicalName='lead')/Keys").json()["value"]
    assert [k["EntityKeyIndexStatus"] for k in keys if k["SchemaName"] == "new_jobtitle_key"] == ["Failed"]
    assert bare.get("leads(jobtitle='Same title')").status_code == 400


# -- persistence -------------------------------------------------------------------------------


def test_a_restart_with_bare_keeps_what_was_customized_since(tmp_path):
    emu = start_bare(tmp_path)
    try:
        dv = Dataverse(emu, token_for(emu))
        dv.call(
            "POST", "EntityDefinitions(LogicalName='lead')/Attributes", json=boolean_column("new_SyncToMkto")
        )
        lead_id = dv.get("leads?$select=lastname&$top=1").json()["value"][0]["leadid"]
        assert dv.call("PATCH", f"leads({lead_id})", json={FILTER: False}).status_code == 204
        definition = dv.get("EntityDefinitions(LogicalName='new_project')").json()
        dv.call(
            "PUT",
            "EntityDefinitions(LogicalName='new_project')",
            json={**definition, "ChangeTrackingEnabled": True},
        )
    finally:
        emu.stop()
    emu = start_bare(tmp_path, seed_scale=None)
    try:
        dv = Dataverse(emu, token_for(emu))
        assert dv.get(f"leads({lead_id})?$select={FILTER}").json()[FILTER] is False
        assert tracking_enabled(dv, "new_project") is True
        assert emu.admin("POST", "bare").json() == {
            "applied": True,
            "dropped": ["lead"],
            "untracked": ["new_project"],
        }
        assert FILTER not in column_names(dv, "lead")
    finally:
        emu.stop()
