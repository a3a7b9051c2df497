"""``setup check`` / ``setup apply`` decisions over fake metadata built from the shipped entity files.

The fakes answer what the hooks would (describe, describe2, EntityDefinitions, Attributes and
the two privilege functions); the end-to-end path over real HTTP is in
``tests/e2e/test_setup.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from crm_sync.config import ENTITIES_DIR, Cast, EntityConfig, MarketoObject, load_entities
from crm_sync.guards.drift import DYNAMICS_TYPES, MARKETO_TYPES, dynamics_needs, marketo_objects
from crm_sync.setup.core import run_apply, run_check
from crm_sync.setup.findings import ActionKind, Kind, report_text

ENTITIES = list(load_entities(ENTITIES_DIR).values())


def _dyn_type(need: Any) -> str:
    if need.lookup:
        return "Lookup"
    if need.cast is None:
        return "Uniqueidentifier" if need.name.endswith("id") else "DateTime"
    return sorted(DYNAMICS_TYPES[need.cast])[0]


class FakeDynamics:
    """Tables holding every column the entities need, full privileges, change tracking on."""

    def __init__(self, entities: Sequence[EntityConfig]) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.tracking: dict[str, bool] = {}
        for e in entities:
            cols = self.tables.setdefault(e.dynamics.table, {})
            for need in dynamics_needs(e):
                cols.setdefault(
                    need.name,
                    {
                        "LogicalName": need.name,
                        "AttributeType": _dyn_type(need),
                        "IsSecured": False,
                        "MetadataId": f"{e.dynamics.table}-{need.name}",
                    },
                )
            self.tracking[e.dynamics.table] = True
        self.privileges = {f"prv{v}{t}" for t in self.tables for v in ("Read", "Write", "Create")}
        self.privileges.add("prvReadUser")
        self.privileges.discard("prvReadsystemuser")
        self.field_rights: list[dict[str, Any]] = []
        self.writes: list[str] = []

    def who_am_i(self) -> dict[str, Any]:
        return {"UserId": "u1"}

    def entity_definition(self, logical_name: str, select: Sequence[str] | None = None) -> dict[str, Any]:
        if logical_name not in self.tables:
            raise LookupError(f"no table {logical_name}")
        return {
            "LogicalName": logical_name,
            "SchemaName": logical_name,
            "ChangeTrackingEnabled": self.tracking[logical_name],
            "CanChangeTrackingBeEnabled": {"Value": True},
            # systemuser's privileges have their own stem (prvReadUser), as in Dataverse
            "Privileges": [{"PrivilegeType": "Read", "Name": "prvReadUser"}]
            if logical_name == "systemuser"
            else [],
        }

    def entity_attributes(
        self, logical_name: str, select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        return list(self.tables[logical_name].values())

    def user_privileges(self, user_id: str) -> list[dict[str, Any]]:
        return [{"PrivilegeName": p, "Depth": "Global"} for p in sorted(self.privileges)]

    def attribute_privileges(self, user_id: str) -> list[dict[str, Any]]:
        return self.field_rights

    def create_attribute(self, logical_name: str, definition: Mapping[str, Any]) -> None:
        name = str(definition["SchemaName"]).lower()
        self.writes.append(f"column {logical_name}.{name}")
        self.tables[logical_name][name] = {
            "LogicalName": name,
            "AttributeType": "Boolean",
            "MetadataId": name,
        }

    def enable_change_tracking(self, logical_name: str) -> None:
        self.writes.append(f"tracking {logical_name}")
        self.tracking[logical_name] = True


class FakeMarketo:
    """Objects holding every field the entities need, with a fitting type; native sync off."""

    def __init__(self, entities: Sequence[EntityConfig]) -> None:
        self.objects: dict[str, dict[str, str]] = {}
        for e in entities:
            for obj, needs in marketo_objects(e):
                fields = self.objects.setdefault(obj, {})
                for need in needs:
                    typ = sorted(MARKETO_TYPES[need.cast])[0] if need.cast else "string"
                    if need.cast is Cast.STRING or need.cast is None:
                        typ = "string"
                    fields.setdefault(need.name, typ)
        self.crm_managed: set[str] = set()
        self.writes: list[list[str]] = []

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        assert path == "/rest/v1/leads/describe2.json"
        fields = [
            {"name": n, "dataType": t, "crmManaged": n in self.crm_managed}
            for n, t in self.objects["leads"].items()
        ]
        return {"result": [{"name": "API Lead", "fields": fields}]}

    def describe(self, object_name: str = "leads") -> list[dict[str, Any]]:
        return [
            {
                "name": object_name,
                "fields": [{"name": n, "dataType": t} for n, t in self.objects[object_name].items()],
            }
        ]

    def create_lead_fields(self, fields: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        self.writes.append([str(f["name"]) for f in fields])
        for f in fields:
            self.objects["leads"][str(f["name"])] = str(f["dataType"])
        return [{"name": f["name"], "status": "created"} for f in fields]


@pytest.fixture
def systems() -> tuple[FakeMarketo, FakeDynamics]:
    return FakeMarketo(ENTITIES), FakeDynamics(ENTITIES)


def test_a_ready_org_passes(systems: tuple[FakeMarketo, FakeDynamics]) -> None:
    marketo, dynamics = systems
    report = run_check(ENTITIES, marketo=marketo, dynamics=dynamics)
    assert report.findings == [], report_text(report)
    assert sorted(report.ready) == sorted(e.name for e in ENTITIES)
    assert "everything the entities need is in place" in report_text(report)


def test_missing_pieces_are_listed_and_apply_creates_them_once(
    systems: tuple[FakeMarketo, FakeDynamics],
) -> None:
    marketo, dynamics = systems
    del marketo.objects["leads"]["msdIsDeleted"]
    del marketo.objects["leads"]["msdPersonNotes"]
    del dynamics.tables["lead"]["new_synctomkto"]
    dynamics.tracking["new_project"] = False

    report = run_check(ENTITIES, marketo=marketo, dynamics=dynamics)
    found = {(f.system, f.object, f.item, f.kind) for f in report.findings}
    assert found == {
        ("marketo", "leads", "msdIsDeleted", Kind.MISSING_FIELD),
        ("marketo", "leads", "msdPersonNotes", Kind.MISSING_FIELD),
        ("dynamics", "lead", "new_synctomkto", Kind.MISSING_FIELD),
        ("dynamics", "new_project", "change tracking", Kind.CHANGE_TRACKING_OFF),
    }
    by_item = {f.item: f for f in report.findings}
    assert by_item["msdIsDeleted"].entities == ("contact", "lead")
    assert by_item["msdIsDeleted"].action is not None
    assert by_item["msdIsDeleted"].action.params == {
        "dataType": "boolean",
        "displayName": "Microsoft is Deleted",
    }
    # lead.yaml maps description (2,000 characters) to it: longer than a Marketo string holds
    assert by_item["msdPersonNotes"].action is not None
    assert by_item["msdPersonNotes"].action.params["dataType"] == "text"
    assert by_item["new_synctomkto"].entities == ("lead",)
    assert all(f.automatic for f in report.findings)
    assert sorted(report.blocked) == ["contact", "lead", "new_project"]

    dry = run_apply(ENTITIES, marketo=marketo, dynamics=dynamics, dry_run=True)
    assert len(dry.planned) == 4
    assert not marketo.writes
    assert not dynamics.writes

    result = run_apply(ENTITIES, marketo=marketo, dynamics=dynamics)
    assert result.after is not None
    assert result.after.findings == []
    assert marketo.writes == [["msdIsDeleted", "msdPersonNotes"]]
    assert sorted(dynamics.writes) == ["column lead.new_synctomkto", "tracking new_project"]

    again = run_apply(ENTITIES, marketo=marketo, dynamics=dynamics)
    assert again.done == []
    assert again.before.findings == []
    assert len(marketo.writes) == 1
    assert len(dynamics.writes) == 2


def test_what_needs_a_person_is_reported_with_its_fix_and_blocks_only_its_entity(
    systems: tuple[FakeMarketo, FakeDynamics],
) -> None:
    marketo, dynamics = systems
    marketo.objects["leads"]["msdIsDeleted"] = "string"  # created by hand with the wrong type
    del marketo.objects["companies"]["msdCompanyNotes"]  # Marketo's API cannot add company fields
    dynamics.privileges.discard("prvWritecontact")
    phone = dynamics.tables["lead"]["telephone2"]
    phone["IsSecured"] = True
    dynamics.field_rights = [
        {"AttributeId": phone["MetadataId"], "CanRead": 4, "CanCreate": 0, "CanUpdate": 0}
    ]

    report = run_check(ENTITIES, marketo=marketo, dynamics=dynamics)
    by_item = {f.item: f for f in report.findings}
    assert set(by_item) == {"msdIsDeleted", "msdCompanyNotes", "prvWritecontact", "telephone2"}
    assert not any(f.automatic for f in report.findings)
    assert by_item["msdIsDeleted"].kind is Kind.WRONG_TYPE
    assert "type string" in by_item["msdIsDeleted"].problem
    assert "boolean" in by_item["msdIsDeleted"].fix
    assert "Marketo Support" in by_item["msdCompanyNotes"].fix
    assert by_item["msdCompanyNotes"].entities == ("account",)
    assert by_item["prvWritecontact"].entities == ("contact",)
    assert "security role" in by_item["prvWritecontact"].fix
    assert by_item["telephone2"].kind is Kind.SECURED_COLUMN
    assert by_item["telephone2"].entities == ("lead",)
    assert "create, update" in by_item["telephone2"].problem
    assert set(report.ready) == {"opportunity", "new_project", "team", "user"}

    result = run_apply(ENTITIES, marketo=marketo, dynamics=dynamics)
    assert result.done == []
    assert marketo.writes == []
    assert dynamics.writes == []
    assert len(result.by_hand) == 4


def test_a_secured_column_only_read_needs_only_read(systems: tuple[FakeMarketo, FakeDynamics]) -> None:
    marketo, dynamics = systems
    created = dynamics.tables["lead"]["createdon"]  # D→M only: the sync never writes it
    created["IsSecured"] = True
    dynamics.field_rights = [
        {"AttributeId": created["MetadataId"], "CanRead": 4, "CanCreate": 0, "CanUpdate": 0}
    ]
    assert run_check(ENTITIES, marketo=marketo, dynamics=dynamics).findings == []
    dynamics.field_rights = []
    (finding,) = run_check(ENTITIES, marketo=marketo, dynamics=dynamics).findings
    assert finding.item == "createdon"
    assert "reads come back empty" in finding.problem


def test_native_sync_on_blocks_every_entity(systems: tuple[FakeMarketo, FakeDynamics]) -> None:
    marketo, dynamics = systems
    marketo.crm_managed = {"msdType", "msdIsDeleted"}
    (finding,) = run_check(ENTITIES, marketo=marketo, dynamics=dynamics).findings
    assert finding.kind is Kind.NATIVE_SYNC_ON
    assert "Disable Sync" in finding.fix
    assert sorted(finding.entities) == sorted(e.name for e in ENTITIES)


def test_a_missing_table_is_reported_not_raised(systems: tuple[FakeMarketo, FakeDynamics]) -> None:
    marketo, dynamics = systems
    del dynamics.tables["new_project"]
    (finding,) = run_check(ENTITIES, marketo=marketo, dynamics=dynamics).findings
    assert finding.kind is Kind.MISSING_TABLE
    assert finding.entities == ("new_project",)


def test_actions_cover_only_lead_fields_and_sync_owned_dynamics_pieces() -> None:
    lead_objects = {e.name for e in ENTITIES if e.marketo.object is MarketoObject.LEAD}
    assert lead_objects == {"lead", "contact"}
    marketo, dynamics = FakeMarketo(ENTITIES), FakeDynamics(ENTITIES)
    for table in dynamics.tables.values():
        table.pop("new_synctomkto", None)
        table.pop("jobtitle", None)  # a mapped column gone: a person must fix the mapping
    report = run_check(ENTITIES, marketo=marketo, dynamics=dynamics)
    kinds = {(f.item, f.action.kind if f.action else None) for f in report.findings}
    assert ("jobtitle", None) in kinds
    assert {k for i, k in kinds if i == "new_synctomkto"} == {ActionKind.CREATE_DYNAMICS_COLUMN}


def test_an_object_the_api_user_cannot_read_is_a_finding_naming_the_permission(
    systems: tuple[FakeMarketo, FakeDynamics],
) -> None:
    marketo, dynamics = systems

    def denied(object_name: str = "leads") -> list[dict[str, Any]]:
        if object_name == "opportunities":
            raise PermissionError("603 Access denied")
        return FakeMarketo.describe(marketo, object_name)

    marketo.describe = denied  # type: ignore[method-assign]
    (finding,) = run_check(ENTITIES, marketo=marketo, dynamics=dynamics).findings
    assert finding.kind is Kind.UNREADABLE
    assert "603 Access denied" in finding.problem
    assert "Read-Write permission on Opportunity" in finding.fix
    assert finding.entities == ("opportunity",)


def test_the_command_exits_2_with_one_line_when_a_connection_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from crm_sync.setup.__main__ import main

    status = main(["check", "--marketo-conn", "no_such_marketo", "--dynamics-conn", "no_such_dynamics"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("setup check failed: ")
    assert "no_such" in err
