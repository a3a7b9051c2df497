"""DynamicsHook's customization and rights methods against a real bare Dataverse emulator."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from crm_sync_hooks.caches import clear_process_caches
from crm_sync_hooks.dynamics import DeltaTokenExpired, DynamicsHook
from crm_sync_hooks.errors import FatalApiError
from tests.hooks.test_dynamics_emulator import FAST, connect
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e


def boolean_column(schema_name: str) -> dict[str, Any]:
    def label(text: str) -> dict[str, Any]:
        return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}

    return {
        "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
        "SchemaName": schema_name,
        "DisplayName": label("Sync to Marketo"),
        "RequiredLevel": {"Value": "None"},
        "DefaultValue": True,
        "OptionSet": {
            "TrueOption": {"Value": 1, "Label": label("Yes")},
            "FalseOption": {"Value": 0, "Label": label("No")},
        },
    }


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator("dynamics", tmp_path_factory.mktemp("dynamics_bare"), ["--bare"], seed_scale=20)
    yield emu
    clear_process_caches()
    gc.collect()  # close idle keep-alive connections so the server shuts down at once
    emu.stop()


@pytest.fixture
def hook(monkeypatch, emulator, tmp_path) -> Iterator[DynamicsHook]:
    emulator.admin("POST", "role", json={"reset": True})
    hook = DynamicsHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    yield hook
    hook.close()


def column_names(hook: DynamicsHook, table: str) -> set[str]:
    return {a["LogicalName"] for a in hook.entity_attributes(table, select=["LogicalName"])}


def test_entity_keys_lists_the_alternate_keys(hook):
    keys = hook.entity_keys("contact")
    assert [(k["KeyAttributes"], k["EntityKeyIndexStatus"]) for k in keys] == [(["emailaddress1"], "Active")]


def test_create_attribute_adds_the_sync_filter_and_refuses_it_twice(hook):
    assert "new_synctomkto" not in column_names(hook, "contact")
    hook.create_attribute("contact", boolean_column("new_SyncToMkto"))
    attributes = hook.entity_attributes("contact", select=["LogicalName", "AttributeType", "SchemaName"])
    assert {"LogicalName": "new_synctomkto", "AttributeType": "Boolean", "SchemaName": "new_SyncToMkto"} in [
        {k: a[k] for k in ("LogicalName", "AttributeType", "SchemaName")} for a in attributes
    ]
    with pytest.raises(FatalApiError) as refused:
        hook.create_attribute("contact", boolean_column("new_SyncToMkto"))
    assert refused.value.code == "0x80047013"


def test_create_key_adds_an_active_alternate_key(hook):
    hook.create_attribute(
        "account",
        {
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "SchemaName": "new_ErpId",
            "MaxLength": 40,
        },
    )
    hook.create_key("account", "new_erpid_key", ["new_erpid"], "ERP id")
    made = {k["SchemaName"]: k for k in hook.entity_keys("account")}["new_erpid_key"]
    assert (made["KeyAttributes"], made["EntityKeyIndexStatus"]) == (["new_erpid"], "Active")
    assert made["DisplayName"]["UserLocalizedLabel"]["Label"] == "ERP id"


def test_enable_change_tracking_makes_track_changes_work(hook, emulator):
    with pytest.raises(FatalApiError) as refused:
        next(hook.track_changes("new_projects", ["new_name"]))
    assert refused.value.status == 400
    assert not isinstance(refused.value, DeltaTokenExpired)
    hook.enable_change_tracking("new_project")
    assert hook.entity_definition("new_project")["ChangeTrackingEnabled"] is True
    pages = list(hook.track_changes("new_projects", ["new_name"]))
    assert pages[-1].delta_link
    emulator.admin("POST", "stats/reset")
    hook.enable_change_tracking("new_project")  # on already: read, nothing sent
    assert not [call for call in emulator.stats()["calls"] if call.startswith("PUT ")]


def test_user_and_attribute_privileges_follow_the_role(hook, emulator):
    user = str(hook.who_am_i()["UserId"])
    assert {"prvReadLead", "prvWriteLead", "prvReadUser"} <= {
        p["PrivilegeName"] for p in hook.user_privileges(user)
    }
    assert hook.attribute_privileges(user) == []
    emulator.admin(
        "POST",
        "role",
        json={
            "deny": [{"table": "lead", "privilege": "Write"}],
            "secured": [{"table": "lead", "column": "telephone2", "read": True, "update": True}],
        },
    )
    assert "prvWriteLead" not in {p["PrivilegeName"] for p in hook.user_privileges(user)}
    (rights,) = hook.attribute_privileges(user)
    telephone2 = next(
        a
        for a in hook.entity_attributes("lead", select=["LogicalName", "MetadataId", "IsSecured"])
        if a["LogicalName"] == "telephone2"
    )
    assert telephone2["IsSecured"] is True
    assert (rights["AttributeId"], rights["CanRead"], rights["CanCreate"], rights["CanUpdate"]) == (
        telephone2["MetadataId"],
        4,
        0,
        4,
    )


def test_user_privileges_wants_a_guid(hook):
    with pytest.raises(ValueError, match="GUID"):
        hook.user_privileges("me'/../WhoAmI")
