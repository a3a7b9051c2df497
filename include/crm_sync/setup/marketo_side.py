"""The Marketo half of ``setup check``: every field the entities need, its type, the native sync.

Reads one describe per Marketo object the entities use (``leads/describe2.json`` for persons, it
also says which fields a CRM sync manages; ``<object>/describe.json`` for the others) and
compares it with :func:`crm_sync.guards.drift.marketo_objects`. Lead fields can be created
through the API (``POST /rest/v1/leads/schema/fields.json``); fields of companies,
opportunities, sales persons and custom objects cannot, so those fixes are for a person.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Protocol

from crm_sync.config import Cast, EntityConfig
from crm_sync.guards.drift import MARKETO_TYPES, marketo_fields, marketo_objects
from crm_sync.setup.findings import MARKETO, Action, ActionKind, Finding, Kind

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from crm_sync.guards.drift import Need

LEADS = "leads"

# The Marketo dataType a lead field is created with, by the mapping's cast.
CREATE_TYPES: dict[Cast, str] = {
    Cast.STRING: "string",
    Cast.EMAIL: "email",
    Cast.INTEGER: "integer",
    Cast.DECIMAL: "float",
    Cast.BOOLEAN: "boolean",
    Cast.DATETIME: "datetime",
    Cast.DATE: "date",
    Cast.CHOICE: "string",
    Cast.MULTICHOICE: "string",
    Cast.GUID: "string",
    Cast.STRING_LIST: "text",
}
STRING_MAX = 255  # a Marketo string field holds 255 characters; longer mappings need text

_OBJECT_NAMES = {
    "leads": "Person",
    "companies": "Company",
    "opportunities": "Opportunity",
    "opportunities/roles": "Opportunity Role",
    "salespersons": "Sales Person",
}


class MarketoMetadata(Protocol):
    """What the check and apply need from the Marketo hook."""

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def describe(self, object_name: str = ...) -> list[dict[str, Any]]: ...

    def create_lead_fields(self, fields: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...


def _display(name: str, display_names: Mapping[str, str]) -> str:
    if name in display_names:
        return display_names[name]
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).split()
    return " ".join(w[:1].upper() + w[1:] for w in words)


def create_type(entity: EntityConfig, need: Need) -> str:
    """The ``dataType`` to create a missing lead field with, from its mapping."""
    if need.cast is None:
        return "string"
    if need.cast is Cast.STRING:
        mapped = next((f for f in entity.fields if f.marketo == need.name), None)
        if mapped is not None and (mapped.max_length or 0) > STRING_MAX:
            return "text"
    return CREATE_TYPES[need.cast]


def _object_label(obj: str) -> str:
    if obj.startswith("customobjects/"):
        return f"custom object {obj.split('/', 1)[1]}"
    return _OBJECT_NAMES.get(obj, obj)


def read_fields(client: MarketoMetadata, obj: str) -> tuple[dict[str, str], set[str]]:
    """``({REST name: dataType}, {names a CRM sync manages})`` of one Marketo object."""
    if obj == LEADS:
        result = list(client.call_json("GET", "/rest/v1/leads/describe2.json").get("result") or [])
        managed = {
            str(f.get("name")) for entry in result for f in entry.get("fields") or [] if f.get("crmManaged")
        }
        return marketo_fields(result), managed
    return marketo_fields(client.describe(obj)), set()


def check_marketo(
    entities: Sequence[EntityConfig],
    client: MarketoMetadata,
    display_names: Mapping[str, str],
) -> tuple[list[Finding], list[str]]:
    """Compare the Marketo objects with what ``entities`` need.

    Returns:
        The findings, and the objects read (``"marketo leads"``...).
    """
    wanted: dict[str, list[tuple[EntityConfig, Need]]] = defaultdict(list)
    for entity in entities:
        for obj, needs in marketo_objects(entity):
            wanted[obj] += [(entity, n) for n in needs]
    findings: list[Finding] = []
    native: set[str] = set()
    for obj, uses in wanted.items():
        users = tuple(sorted({e.name for e, _ in uses}))
        try:
            current, managed = read_fields(client, obj)
        except Exception as exc:  # an API error on a read is itself a finding
            findings.append(_unreadable(obj, exc, users))
            continue
        native |= managed
        findings += _compare(obj, uses, current, display_names)
    if native:
        findings.append(_native_sync(sorted(native), entities))
    return findings, [f"marketo {obj}" for obj in wanted]


def _compare(
    obj: str,
    needs: Iterable[tuple[EntityConfig, Need]],
    current: Mapping[str, str],
    display_names: Mapping[str, str],
) -> list[Finding]:
    label = _object_label(obj)
    by_field: dict[str, list[tuple[EntityConfig, Need]]] = defaultdict(list)
    for entity, need in needs:
        by_field[need.name].append((entity, need))
    findings: list[Finding] = []
    for name, uses in by_field.items():
        users = tuple(sorted({e.name for e, _ in uses}))
        roles = "; ".join(sorted({n.role for _, n in uses}))
        typed = next(((e, n) for e, n in uses if n.cast is not None), uses[0])
        entity, need = typed
        now = current.get(name)
        if now is None:
            findings.append(_missing(obj, label, name, roles, users, entity, need, display_names))
        elif need.cast is not None and now not in MARKETO_TYPES[need.cast]:
            want = CREATE_TYPES[need.cast]
            findings.append(
                Finding(
                    MARKETO,
                    obj,
                    name,
                    Kind.WRONG_TYPE,
                    f"{label} field {name} ({roles}) has type {now}; the sync needs {want} "
                    f"(one of {', '.join(sorted(MARKETO_TYPES[need.cast]))}).",
                    "Marketo cannot change a field's type: rename or delete the field in Admin > "
                    f"Field Management, then run setup apply to create {name} as {want} (or map "
                    f"another field in entities/{entity.name}.yaml).",
                    users,
                )
            )
    return findings


def _missing(
    obj: str,
    label: str,
    name: str,
    roles: str,
    users: tuple[str, ...],
    entity: EntityConfig,
    need: Need,
    display_names: Mapping[str, str],
) -> Finding:
    problem = f"{label} field {name} ({roles}) does not exist."
    if obj == LEADS:
        data_type, display = create_type(entity, need), _display(name, display_names)
        action = Action(
            ActionKind.CREATE_MARKETO_LEAD_FIELD, LEADS, name, {"dataType": data_type, "displayName": display}
        )
        fix = f"create the custom person field {name} ({data_type}, shown as '{display}')."
        return Finding(MARKETO, obj, name, Kind.MISSING_FIELD, problem, fix, users, action)
    fix = (
        f"Marketo's API cannot add {label} fields: ask Marketo Support to add {name} to the {label} "
        f"object, or remove it from entities/{entity.name}.yaml."
    )
    return Finding(MARKETO, obj, name, Kind.MISSING_FIELD, problem, fix, users)


def _unreadable(obj: str, exc: Exception, users: tuple[str, ...]) -> Finding:
    label = _object_label(obj)
    return Finding(
        MARKETO,
        obj,
        "describe",
        Kind.UNREADABLE,
        f"could not read the {label} fields: {type(exc).__name__}: {exc}",
        f"give the API-only user's role Read-Write permission on {label} records (Admin > Users & "
        "Roles), and check the custom object is approved; then run setup check again.",
        users,
    )


def _native_sync(managed: Sequence[str], entities: Sequence[EntityConfig]) -> Finding:
    shown = ", ".join(managed[:5]) + (f" and {len(managed) - 5} more" if len(managed) > 5 else "")
    return Finding(
        MARKETO,
        LEADS,
        "native Dynamics sync",
        Kind.NATIVE_SYNC_ON,
        f"Marketo's native Microsoft Dynamics sync is on (it manages {shown}); while it is, the "
        "company, opportunity, role and sales-person APIs refuse writes (1018 CRM Enabled) and two "
        "syncs would write the same persons.",
        "switch the native sync off: Admin > Microsoft Dynamics > Disable Sync (and remove its "
        "plug-in from Dynamics if no longer used); then run setup check again.",
        tuple(sorted(e.name for e in entities)),
    )


def apply_marketo(client: MarketoMetadata, actions: Sequence[Action]) -> list[str]:
    """Create the missing lead fields in one call; returns one line per field's result."""
    fields = [
        {
            "name": a.name,
            "displayName": a.params["displayName"],
            "dataType": a.params["dataType"],
            "description": "Owned by marketo-dynamics-sync; written only by the sync's API user.",
        }
        for a in actions
        if a.kind is ActionKind.CREATE_MARKETO_LEAD_FIELD
    ]
    if not fields:
        return []
    try:
        results = client.create_lead_fields(fields)
    except Exception as exc:  # the re-check lists the fields still missing
        return [f"create {len(fields)} Marketo lead field(s): failed: {type(exc).__name__}: {exc}"]
    lines = []
    for entry in results:
        reasons = "; ".join(f"{r.get('code')} {r.get('message')}" for r in entry.get("reasons") or [])
        why = f" ({reasons})" if reasons else ""
        lines.append(f"Marketo lead field {entry.get('name')}: {entry.get('status')}{why}")
    return lines
