"""MarketoHook's lead field schema methods against a real, bare Marketo emulator (HTTPS, project CA)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from crm_sync_hooks.marketo import MarketoHook
from tests.hooks.test_marketo_emulator import FAST, connect
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e

FIELDS_PATH = "/rest/v1/leads/schema/fields.json"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator("marketo", tmp_path_factory.mktemp("marketo-bare"), ["--limits", "off", "--bare"])
    yield emu
    gc.collect()  # close idle keep-alive connections so the server shuts down at once
    emu.stop()


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator, tmp_path: Any) -> Iterator[MarketoHook]:
    emulator.admin("POST", "stats/reset")
    hook = MarketoHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    yield hook
    hook.close()


def _calls(emulator: RunningEmulator, method: str) -> int:
    return int(emulator.stats()["calls"].get(f"{method} {FIELDS_PATH}", 0))


def test_lead_field_schema_reads_every_page(hook: MarketoHook, emulator: RunningEmulator) -> None:
    fields = hook.lead_field_schema(batch_size=10)

    names = [f["name"] for f in fields]
    assert len(names) == len(set(names)) > 30
    assert _calls(emulator, "GET") == -(-len(names) // 10)
    email = next(f for f in fields if f["name"] == "email")
    assert (email["dataType"], email["isCustom"]) == ("email", False)
    assert "msdSyncToDynamics" not in names  # bare, and no test here creates it


def test_create_lead_fields_chunks_by_100_and_reports_each_field(
    hook: MarketoHook, emulator: RunningEmulator
) -> None:
    wanted = [
        {"name": "msdType", "displayName": "Microsoft Type", "dataType": "string"},
        {"name": "msdIsDeleted", "displayName": "Microsoft is Deleted", "dataType": "boolean"},
        *(
            {"name": f"hookField{i}", "displayName": f"Hook Field {i}", "dataType": "integer"}
            for i in range(103)
        ),
    ]

    results = hook.create_lead_fields(wanted)

    assert [(r["name"], r["status"]) for r in results] == [(f["name"], "created") for f in wanted]
    assert _calls(emulator, "POST") == 2
    schema = {f["name"]: f["dataType"] for f in hook.lead_field_schema()}
    assert (schema["msdType"], schema["msdIsDeleted"], schema["hookField102"]) == (
        "string",
        "boolean",
        "integer",
    )


def test_creating_existing_fields_again_skips_them_without_raising(hook: MarketoHook) -> None:
    field = {"name": "msdRecordId", "displayName": "Microsoft Record Id", "dataType": "string"}
    assert hook.create_lead_fields([field])[0]["status"] == "created"

    unsupported = {"name": "msdTopic", "displayName": "Microsoft Topic", "dataType": "picklist"}
    again = hook.create_lead_fields([field, unsupported])

    assert [(r["name"], r["status"], r["reasons"][0]["code"]) for r in again] == [
        ("msdRecordId", "skipped", "1017"),
        ("msdTopic", "skipped", "1003"),
    ]


def test_created_fields_are_writable_through_sync_leads(hook: MarketoHook) -> None:
    hook.create_lead_fields(
        [{"name": "msdHomePhone", "displayName": "Microsoft Home Phone", "dataType": "phone"}]
    )

    (result,) = hook.sync_leads([{"email": "schema.hook@example.test", "msdHomePhone": "+1 555 0100"}])

    (page,) = hook.get_leads("id", [int(result.id or 0)], fields=["msdHomePhone"])
    assert page == [{"msdHomePhone": "+1 555 0100"}]


def test_create_lead_fields_checks_its_input_before_calling(
    hook: MarketoHook, emulator: RunningEmulator
) -> None:
    with pytest.raises(ValueError, match="field 1 has no dataType"):
        hook.create_lead_fields(
            [{"name": "a", "displayName": "A", "dataType": "string"}, {"name": "b", "displayName": "B"}]
        )
    assert _calls(emulator, "POST") == 0
