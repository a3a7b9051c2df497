"""The Dataverse half of ``setup check``: columns, change tracking and the application user's rights.

Per table the entities use: its definition (``ChangeTrackingEnabled``) and its columns
(``AttributeType``, ``IsSecured``), compared with :func:`crm_sync.guards.drift.dynamics_needs`.
For the application user (``WhoAmI``): its table privileges (``RetrieveUserPrivileges``) and its
field-security rights on secured columns (``RetrievePrincipalAttributePrivileges``).

``setup apply`` can create the sync-filter column and switch change tracking on through the
metadata API; a missing mapped column, a type that does not fit, a missing privilege and a
secured column are fixed by a person (the mapping, the security role, the field security
profile).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Protocol

from crm_sync.config import Direction, EntityConfig
from crm_sync.guards.drift import DYNAMICS_LOOKUP_TYPES, DYNAMICS_TYPES, dynamics_fields, dynamics_needs
from crm_sync.setup.findings import DYNAMICS, Action, ActionKind, Finding, Kind

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crm_sync.guards.drift import Need

ALLOWED = 4  # field-permission value: allowed (0 = not allowed)
ROLE_FIX = (
    "in the Power Platform admin center, open the security role of the application user and give "
    "it {privilege} at Organization level on the {table} table"
)


class DynamicsMetadata(Protocol):
    """What the check and apply need from the Dataverse hook."""

    def who_am_i(self) -> dict[str, Any]: ...

    def entity_definition(self, logical_name: str, select: Sequence[str] | None = None) -> dict[str, Any]: ...

    def entity_attributes(
        self, logical_name: str, select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]: ...

    def user_privileges(self, user_id: str) -> list[dict[str, Any]]: ...

    def attribute_privileges(self, user_id: str) -> list[dict[str, Any]]: ...

    def create_attribute(self, logical_name: str, definition: Mapping[str, Any]) -> None: ...

    def enable_change_tracking(self, logical_name: str) -> None: ...


def _managed_true(value: Any) -> bool:
    """A managed property (``{"Value": true, ...}``) or a plain boolean."""
    return bool(value.get("Value")) if isinstance(value, dict) else bool(value)


def _written_columns(entity: EntityConfig) -> set[str]:
    if not entity.writes_dynamics:
        return set()
    return {f.dynamics for f in entity.fields_for(Direction.M2D)}


def check_dynamics(
    entities: Sequence[EntityConfig], client: DynamicsMetadata
) -> tuple[list[Finding], list[str]]:
    """Compare the Dataverse tables and the application user's rights with what ``entities`` need.

    Returns:
        The findings, and the objects read (``"dynamics lead"``...).
    """
    by_table: dict[str, list[EntityConfig]] = defaultdict(list)
    for entity in entities:
        by_table[entity.dynamics.table].append(entity)
    user_id = str(client.who_am_i()["UserId"])
    privileges = {str(p.get("PrivilegeName", "")).lower() for p in client.user_privileges(user_id)}
    field_rights = {str(p.get("AttributeId", "")).lower(): p for p in client.attribute_privileges(user_id)}
    findings: list[Finding] = []
    for table, users in by_table.items():
        findings += _check_table(table, users, client, privileges, field_rights)
    return findings, [f"dynamics {t}" for t in by_table]


def _check_table(
    table: str,
    users: Sequence[EntityConfig],
    client: DynamicsMetadata,
    privileges: set[str],
    field_rights: Mapping[str, Mapping[str, Any]],
) -> list[Finding]:
    names = tuple(sorted(e.name for e in users))
    try:
        definition = client.entity_definition(
            table,
            select=[
                "LogicalName",
                "SchemaName",
                "ChangeTrackingEnabled",
                "CanChangeTrackingBeEnabled",
                "Privileges",
            ],
        )
        attributes = client.entity_attributes(
            table, select=["LogicalName", "AttributeType", "IsSecured", "MetadataId"]
        )
    except Exception as exc:  # a table that is not there, or not readable, is itself a finding
        return [
            Finding(
                DYNAMICS,
                table,
                "",
                Kind.MISSING_TABLE,
                f"could not read the table definition: {type(exc).__name__}: {exc}",
                f"create the table {table}, or correct dynamics.table in entities/{names[0]}.yaml; "
                "the application user needs read access to table definitions.",
                names,
            )
        ]
    findings = _privileges(table, privilege_names(definition), users, privileges)
    if not _managed_true(definition.get("ChangeTrackingEnabled")):
        findings.append(_change_tracking(table, definition, names))
    types = dynamics_fields(attributes)
    by_name = {str(a.get("LogicalName")): a for a in attributes}
    for entity in users:
        written = _written_columns(entity)
        for need in dynamics_needs(entity):
            findings += _column(table, entity, need, types, by_name, written, field_rights)
    return _merge(findings)


def privilege_names(definition: Mapping[str, Any]) -> dict[str, str]:
    """``{"Read": "prvReadLead", ...}`` of a table, from its definition's ``Privileges``.

    The names usually are ``prv<Type><SchemaName>``, but not always (``systemuser`` has
    ``prvReadUser``), so the table's own list wins; the rule is the fallback.
    """
    schema = str(definition.get("SchemaName") or definition.get("LogicalName") or "")
    names = {verb: f"prv{verb}{schema}" for verb in ("Read", "Create", "Write")}
    for p in definition.get("Privileges") or []:
        if p.get("PrivilegeType") in names and p.get("Name"):
            names[str(p["PrivilegeType"])] = str(p["Name"])
    return names


def _privileges(
    table: str, names: Mapping[str, str], users: Sequence[EntityConfig], held: set[str]
) -> list[Finding]:
    findings = []
    for verb in ("Read", "Create", "Write"):
        needing = tuple(sorted(e.name for e in users if verb == "Read" or e.writes_dynamics))
        privilege = names[verb]
        if needing and privilege.lower() not in held:
            what = "read its rows" if verb == "Read" else f"{verb.lower()} its rows (Marketo → Dynamics)"
            findings.append(
                Finding(
                    DYNAMICS,
                    table,
                    privilege,
                    Kind.MISSING_PRIVILEGE,
                    f"the application user lacks {privilege}: the sync cannot {what}.",
                    ROLE_FIX.format(privilege=privilege, table=table) + ".",
                    needing,
                )
            )
    return findings


def _change_tracking(table: str, definition: Mapping[str, Any], names: tuple[str, ...]) -> Finding:
    problem = f"change tracking is off on {table}: the sync reads changes through it."
    if _managed_true(definition.get("CanChangeTrackingBeEnabled", True)):
        return Finding(
            DYNAMICS,
            table,
            "change tracking",
            Kind.CHANGE_TRACKING_OFF,
            problem,
            f"switch on Track changes for {table} (table properties > Advanced options); it cannot "
            "be switched off again.",
            names,
            Action(ActionKind.ENABLE_CHANGE_TRACKING, table),
        )
    return Finding(
        DYNAMICS,
        table,
        "change tracking",
        Kind.CHANGE_TRACKING_OFF,
        problem + " This table cannot have change tracking.",
        f"remove the entities {', '.join(names)} (Dataverse cannot track changes on {table}).",
        names,
    )


def _column(
    table: str,
    entity: EntityConfig,
    need: Need,
    types: Mapping[str, str],
    by_name: Mapping[str, Mapping[str, Any]],
    written: set[str],
    field_rights: Mapping[str, Mapping[str, Any]],
) -> list[Finding]:
    users = (entity.name,)
    where = f"{table}.{need.name} ({need.role})"
    now = types.get(need.name)
    if now is None:
        return [_missing_column(table, entity, need, where)]
    wrong: tuple[str, str] | None = None  # (problem, fix) when the column's type does not fit
    if need.lookup and now not in DYNAMICS_LOOKUP_TYPES:
        wrong = (f"{where} has type {now}; a lookup is needed.", "map a lookup column")
    elif need.cast is not None and now not in DYNAMICS_TYPES[need.cast]:
        wrong = (
            f"{where} has type {now}, which cast {need.cast.value} cannot use "
            f"(one of {', '.join(sorted(DYNAMICS_TYPES[need.cast]))}).",
            "change the cast or map another column",
        )
    if wrong is not None:
        problem, fix = wrong
        return [
            Finding(
                DYNAMICS,
                table,
                need.name,
                Kind.WRONG_TYPE,
                problem,
                f"{fix} in entities/{entity.name}.yaml.",
                users,
            )
        ]
    attribute = by_name.get(need.name) or {}
    if not _managed_true(attribute.get("IsSecured")):
        return []
    rights = field_rights.get(str(attribute.get("MetadataId", "")).lower(), {})
    missing = [r for r in ("CanRead",) if int(rights.get(r) or 0) != ALLOWED]
    if need.name in written:
        missing += [r for r in ("CanCreate", "CanUpdate") if int(rights.get(r) or 0) != ALLOWED]
    if not missing:
        return []
    allowed = ", ".join(m[3:].lower() for m in missing)
    return [
        Finding(
            DYNAMICS,
            table,
            need.name,
            Kind.SECURED_COLUMN,
            f"{where} is a secured column and the application user may not {allowed} it"
            + (" (reads come back empty)" if "CanRead" in missing else "")
            + ".",
            f"add the application user (or its team) to a field security profile that allows "
            f"{allowed} on {table}.{need.name}, or take the column out of entities/{entity.name}.yaml.",
            users,
        )
    ]


def _missing_column(table: str, entity: EntityConfig, need: Need, where: str) -> Finding:
    problem = f"{where} does not exist."
    if need.name == entity.dynamics.filter_column:
        return Finding(
            DYNAMICS,
            table,
            need.name,
            Kind.MISSING_FIELD,
            problem,
            f"create the Two Options column {need.name} on {table} (or set filter_column: null in "
            f"entities/{entity.name}.yaml to sync every row).",
            (entity.name,),
            Action(ActionKind.CREATE_DYNAMICS_COLUMN, table, need.name, {"type": "Boolean"}),
        )
    return Finding(
        DYNAMICS,
        table,
        need.name,
        Kind.MISSING_FIELD,
        problem,
        f"create the column in Dataverse, or map another column in entities/{entity.name}.yaml.",
        (entity.name,),
    )


def _merge(findings: Sequence[Finding]) -> list[Finding]:
    """One finding per (object, item, kind), blocking the union of the entities."""
    merged: dict[tuple[str, str, Kind], Finding] = {}
    for f in findings:
        key = (f.object, f.item, f.kind)
        if key in merged:
            old = merged[key]
            entities = tuple(sorted(set(old.entities) | set(f.entities)))
            merged[key] = Finding(
                old.system, old.object, old.item, old.kind, old.problem, old.fix, entities, old.action
            )
        else:
            merged[key] = f
    return list(merged.values())


def filter_column_definition(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``BooleanAttributeMetadata`` of the sync-filter column (``definitions.yaml``)."""

    def label(text: str) -> dict[str, Any]:
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.Label",
            "LocalizedLabels": [
                {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033}
            ],
        }

    def option(value: int, text: str) -> dict[str, Any]:
        return {"Value": value, "Label": label(text)}

    return {
        "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
        "AttributeType": "Boolean",
        "AttributeTypeName": {"Value": "BooleanType"},
        "SchemaName": name,
        "DisplayName": label(str(settings.get("display_name") or name)),
        "Description": label(str(settings.get("description") or "")),
        "RequiredLevel": {"Value": "None", "CanBeChanged": True},
        "DefaultValue": bool(settings.get("default", True)),
        "OptionSet": {
            "@odata.type": "Microsoft.Dynamics.CRM.BooleanOptionSetMetadata",
            "TrueOption": option(1, "Yes"),
            "FalseOption": option(0, "No"),
            "OptionSetType": "Boolean",
        },
    }


def apply_dynamics(
    client: DynamicsMetadata, actions: Sequence[Action], settings: Mapping[str, Any]
) -> list[str]:
    """Create the missing filter columns and switch change tracking on; one line per call."""
    done = []
    for action in actions:
        try:
            if action.kind is ActionKind.CREATE_DYNAMICS_COLUMN:
                client.create_attribute(action.object, filter_column_definition(action.name, settings))
            elif action.kind is ActionKind.ENABLE_CHANGE_TRACKING:
                client.enable_change_tracking(action.object)
            else:
                continue
        except Exception as exc:  # one refused call must not stop the others; the re-check shows it
            done.append(f"{action.describe()}: failed: {type(exc).__name__}: {exc}")
            continue
        done.append(f"{action.describe()}: done")
    return done
