"""Schema drift check: before a run writes, the entity's mapped fields must still fit both APIs.

For each API object the entity touches (its Dataverse table; its Marketo object, plus the
opportunity-role object for opportunities) the check reads the current fields and their types:

* Dataverse: ``EntityDefinitions(LogicalName=…)/Attributes`` (``LogicalName``, ``AttributeType``),
  read on every run (metadata reads do not touch the Marketo quota and cost one request);
* Marketo: ``describe`` of the object, read at most once per day (Adobe's guidance for describe
  results; it spends daily quota) and otherwise taken from the stored snapshot of that day.

It compares them with what the entity needs (keys, sync-owned fields, mapped fields and lookups)
and with the snapshot the last passing check accepted:

* a needed field that is gone is an error; when the object gained a field of the same type since
  the snapshot the message names it as a probable rename;
* a mapped field whose type no longer fits its cast is an error naming both types;
* fields that appeared since the snapshot are reported (logged and returned), never an error.

Errors raise :class:`SchemaDriftError` (:func:`raise_for_drift`: one message listing every
problem, each naming the object and field); the snapshot of that object is then left as it
was, so every later run stops the same way until the mapping or the schema is fixed. An object
that passes gets the fields it showed stored as its new snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from crm_sync.config import Cast, EntityConfig, MarketoObject
from crm_sync.guards import GuardError
from crm_sync.state.guards import get_snapshot, save_snapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

DYNAMICS = "dynamics"
MARKETO = "marketo"

# Columns the extractor computes from an $expand; they are not table attributes.
DERIVED_DYNAMICS_COLUMNS = frozenset({"member_ids", "customer_parent_account"})

# Dataverse AttributeType values each cast can read and write.
DYNAMICS_TYPES: dict[Cast, frozenset[str]] = {
    Cast.STRING: frozenset({"String", "Memo"}),
    Cast.EMAIL: frozenset({"String"}),
    Cast.INTEGER: frozenset({"Integer", "BigInt"}),
    Cast.DECIMAL: frozenset({"Decimal", "Double", "Money", "Integer", "BigInt"}),
    Cast.BOOLEAN: frozenset({"Boolean"}),
    Cast.DATETIME: frozenset({"DateTime"}),
    Cast.DATE: frozenset({"DateTime"}),
    Cast.CHOICE: frozenset({"Picklist", "State", "Status"}),
    Cast.MULTICHOICE: frozenset({"MultiSelectPicklist", "Virtual"}),
    Cast.GUID: frozenset({"Uniqueidentifier", "Lookup", "Customer", "Owner"}),
    Cast.STRING_LIST: frozenset({"String", "Memo"}),
}
DYNAMICS_LOOKUP_TYPES = frozenset({"Lookup", "Customer", "Owner"})

_MARKETO_TEXT = frozenset({"string", "text", "email", "phone", "url", "reference", "textarea", "link"})
# Marketo dataType values each cast can read and write.
MARKETO_TYPES: dict[Cast, frozenset[str]] = {
    Cast.STRING: _MARKETO_TEXT,
    Cast.EMAIL: frozenset({"email", "string"}),
    Cast.INTEGER: frozenset({"integer", "float", "currency"}),
    Cast.DECIMAL: frozenset({"float", "currency", "integer"}),
    Cast.BOOLEAN: frozenset({"boolean"}),
    Cast.DATETIME: frozenset({"datetime"}),
    Cast.DATE: frozenset({"date", "datetime"}),
    Cast.CHOICE: _MARKETO_TEXT,
    Cast.MULTICHOICE: _MARKETO_TEXT,
    Cast.GUID: _MARKETO_TEXT,
    Cast.STRING_LIST: _MARKETO_TEXT,
}
_MARKETO_PATHS = {
    MarketoObject.LEAD: "leads",
    MarketoObject.COMPANY: "companies",
    MarketoObject.OPPORTUNITY: "opportunities",
    MarketoObject.OPPORTUNITY_ROLE: "opportunities/roles",
    MarketoObject.SALES_PERSON: "salespersons",
}
ROLE_FIELDS = ("externalOpportunityId", "leadId", "role", "isPrimary")


class SchemaDriftError(GuardError):
    """Mapped fields are gone or changed type; the entity's run stopped before any write.

    Attributes:
        problems: One line per problem, each naming the system, object and field.
    """

    def __init__(self, entity: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(
            f"{entity}: schema drift, the run stopped before any write: "
            + "; ".join(self.problems)
            + ". Fix the schema or the entity mapping (entities/<name>.yaml), then run again."
        )


class MarketoDescriber(Protocol):
    """What the check needs from the Marketo hook."""

    def describe(self, object_name: str = ...) -> list[dict[str, Any]]:
        """The describe result of ``leads`` or a Lead Database object."""
        ...


class DynamicsDescriber(Protocol):
    """What the check needs from the Dataverse hook."""

    def entity_attributes(
        self, logical_name: str, select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The column definitions of a table."""
        ...


@dataclass(frozen=True)
class Need:
    """A field the entity needs in one API object.

    Attributes:
        name: The field name in that API (Dataverse logical name, Marketo REST name).
        role: How the entity uses it, for messages (``mapped to Marketo title``, ``key``...).
        cast: The mapped field's cast (None: only its existence matters).
        lookup: A Dataverse lookup column (its type must be a lookup type).
    """

    name: str
    role: str
    cast: Cast | None = None
    lookup: bool = False


@dataclass
class ObjectReport:
    """What the check found for one API object."""

    system: str
    object: str
    fingerprint: str
    problems: list[str] = field(default_factory=list)
    new_fields: list[str] = field(default_factory=list)
    changed_types: list[str] = field(default_factory=list)
    cached: bool = False


def marketo_object_name(entity: EntityConfig) -> str:
    """Path segment of the entity's Marketo object in ``/rest/v1/<x>/describe.json``."""
    if entity.marketo.object is MarketoObject.CUSTOM_OBJECT:
        return f"customobjects/{entity.marketo.api_name}"
    return _MARKETO_PATHS[entity.marketo.object]


def _lookup_column(wire_name: str) -> str:
    """``_parentcustomerid_value`` → ``parentcustomerid`` (the attribute's logical name)."""
    if wire_name.startswith("_") and wire_name.endswith("_value"):
        return wire_name[1 : -len("_value")]
    return wire_name


def dynamics_needs(entity: EntityConfig) -> list[Need]:
    """The Dataverse columns the entity reads or writes."""
    d = entity.dynamics
    needs = [Need(d.key, "the key"), Need(d.modified_column, "the change timestamp")]
    if d.filter_column:
        needs.append(Need(d.filter_column, "the sync filter"))
    for f in entity.fields:
        if f.dynamics not in DERIVED_DYNAMICS_COLUMNS:
            needs.append(Need(f.dynamics, f"mapped to Marketo {f.marketo}", f.cast))
    for lk in entity.lookups:
        if lk.dynamics not in DERIVED_DYNAMICS_COLUMNS:
            needs.append(Need(_lookup_column(lk.dynamics), f"lookup into Marketo {lk.marketo}", lookup=True))
    if entity.roles:
        needs.append(Need(_lookup_column(entity.roles.lookup), "the opportunity-role customer", lookup=True))
    return _unique(needs)


def marketo_needs(entity: EntityConfig) -> list[Need]:
    """The Marketo fields of the entity's object that it reads or writes."""
    m = entity.marketo
    needs = [Need(m.key, "the key")]
    for attr, role, cast in (
        ("type_field", "the person type", Cast.STRING),
        ("deleted_field", "the deleted flag", Cast.BOOLEAN),
        ("record_id_field", "the Dataverse record id", Cast.STRING),
        ("email_field", "the email for dedup", None),
        ("sync_flag_field", "the sync-to-Dynamics flag", Cast.BOOLEAN),
    ):
        value = getattr(m, attr)
        if value:
            needs.append(Need(value, role, cast))
    for f in entity.fields:
        needs.append(Need(f.marketo, f"mapped to Dataverse {entity.dynamics.table}.{f.dynamics}", f.cast))
    for lk in entity.lookups:
        needs.append(Need(lk.marketo, f"filled from the lookup {lk.dynamics}"))
    return _unique(needs)


def _unique(needs: Iterable[Need]) -> list[Need]:
    seen: dict[str, Need] = {}
    for n in needs:
        if n.name not in seen or (seen[n.name].cast is None and n.cast is not None):
            seen[n.name] = n
    return list(seen.values())


def dynamics_fields(attributes: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``{logical name: AttributeType}`` from ``EntityDefinitions(...)/Attributes`` rows."""
    return {
        str(a["LogicalName"]): str(a.get("AttributeType") or "") for a in attributes if a.get("LogicalName")
    }


def marketo_fields(describe: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``{REST name: dataType}`` from a leads describe (one entry per field) or an object describe."""
    out: dict[str, str] = {}
    for entry in describe:
        if isinstance(entry.get("fields"), list):  # object describe: one entry with its fields
            for f in entry["fields"]:
                out[str(f["name"])] = str(f.get("dataType") or "")
        elif isinstance(entry.get("rest"), dict):  # leads describe: one entry per field
            out[str(entry["rest"]["name"])] = str(entry.get("dataType") or "")
        elif "name" in entry:
            out[str(entry["name"])] = str(entry.get("dataType") or "")
    return out


def fingerprint(fields: dict[str, str]) -> str:
    """A stable digest of an object's fields and types."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _type_change(before: str | None, now: str) -> str:
    return f"changed type {before} -> {now}" if before and before != now else f"has type {now}"


def compare(
    system: str,
    obj: str,
    needs: Sequence[Need],
    current: dict[str, str],
    baseline: dict[str, str] | None,
) -> ObjectReport:
    """Compare the current fields of one object with the entity's needs and the accepted snapshot.

    Args:
        system: ``dynamics`` or ``marketo``.
        obj: Table logical name or Marketo object path.
        needs: What the entity needs in this object.
        current: The fields now (name → type).
        baseline: The fields the last passing check accepted, or None on the first check.

    Returns:
        The report; ``problems`` is empty when the entity can run.
    """
    side = "Dataverse" if system == DYNAMICS else "Marketo"
    allowed = DYNAMICS_TYPES if system == DYNAMICS else MARKETO_TYPES
    report = ObjectReport(system, obj, fingerprint(current))
    appeared = {n: t for n, t in current.items() if baseline is not None and n not in baseline}
    report.new_fields = sorted(appeared)
    for need in needs:
        where = f"{side} {obj}.{need.name} ({need.role})"
        now = current.get(need.name)
        before = (baseline or {}).get(need.name)
        if now is None:
            renamed = sorted(n for n, t in appeared.items() if before is not None and t == before)
            hint = (
                f"; new field(s) of the same type {before}: {', '.join(renamed)} (renamed?)"
                if renamed
                else ""
            )
            report.problems.append(f"{where} no longer exists{hint}")
            continue
        if need.lookup and system == DYNAMICS and now not in DYNAMICS_LOOKUP_TYPES:
            report.problems.append(f"{where} {_type_change(before, now)}; a lookup type is needed")
        elif need.cast is not None and now not in allowed[need.cast]:
            report.problems.append(
                f"{where} {_type_change(before, now)}, which cast {need.cast.value} cannot use"
            )
        elif before is not None and before != now:
            report.changed_types.append(f"{obj}.{need.name}: {before} -> {now}")
    return report


def marketo_objects(entity: EntityConfig) -> list[tuple[str, list[Need]]]:
    """The Marketo objects the entity uses (path segment) with what it needs in each."""
    objects = [(marketo_object_name(entity), marketo_needs(entity))]
    if entity.roles:
        objects.append(("opportunities/roles", [Need(f, "an opportunity-role field") for f in ROLE_FIELDS]))
    return objects


def check_schema(
    entity: EntityConfig,
    session: Session,
    *,
    marketo: MarketoDescriber | None,
    dynamics: DynamicsDescriber | None,
    today: str,
) -> dict[str, Any]:
    """Run the drift check of one entity; store the accepted snapshots when it passes.

    Args:
        entity: The entity.
        session: State-store session (snapshots; committed by the caller).
        marketo: Marketo client (None skips the Marketo side).
        dynamics: Dataverse client (None skips the Dataverse side).
        today: The day (``YYYY-MM-DD``) a Marketo describe stays cached for.

    Returns:
        ``{"objects": [...], "new_fields": {"dynamics contact": [...]}, "changed_types": [...],
        "problems": [...]}``; ``problems`` (one line per removed, renamed or retyped field, each
        naming it) must be empty for the run to go on: see :func:`raise_for_drift`.
    """
    reports: list[tuple[ObjectReport, dict[str, str], str]] = []
    if dynamics is not None:
        table = entity.dynamics.table
        current = dynamics_fields(dynamics.entity_attributes(table, select=["LogicalName", "AttributeType"]))
        snap = get_snapshot(session, DYNAMICS, table)
        report = compare(DYNAMICS, table, dynamics_needs(entity), current, snap.fields if snap else None)
        reports.append((report, current, today))
    if marketo is not None:
        for obj, needs in marketo_objects(entity):
            snap = get_snapshot(session, MARKETO, obj)
            cached = snap is not None and snap.read_on == today
            baseline: dict[str, str] | None
            if snap is not None and cached:
                current, read_on, baseline = dict(snap.fields), snap.read_on, dict(snap.fields)
            else:
                current, read_on = marketo_fields(marketo.describe(obj)), today
                baseline = dict(snap.fields) if snap else None
            report = compare(MARKETO, obj, needs, current, baseline)
            report.cached = cached
            reports.append((report, current, read_on))
    problems = [p for r, _, _ in reports for p in r.problems]
    for report, current, read_on in reports:
        if not report.problems:
            save_snapshot(session, report.system, report.object, current, report.fingerprint, read_on)
    new_fields = {f"{r.system} {r.object}": r.new_fields for r, _, _ in reports if r.new_fields}
    changed = [c for r, _, _ in reports for c in r.changed_types]
    result: dict[str, Any] = {
        "objects": [
            {"system": r.system, "object": r.object, "fingerprint": r.fingerprint[:16], "cached": r.cached}
            for r, _, _ in reports
        ],
        "new_fields": new_fields,
        "changed_types": changed,
    }
    for where, names in new_fields.items():
        log.warning("%s: new fields in %s (not mapped): %s", entity.name, where, ", ".join(names))
    for change in changed:
        log.warning("%s: a mapped field changed to a compatible type: %s", entity.name, change)
    result["problems"] = problems
    if not problems:
        log.info("%s: schema check passed: %s", entity.name, result["objects"])
    return result


def raise_for_drift(entity: EntityConfig, result: dict[str, Any]) -> None:
    """Raise :class:`SchemaDriftError` when :func:`check_schema` found problems.

    Separate from the check so the caller can first commit the snapshots of the objects that
    passed (a Marketo describe read today is then not read again by the next run).
    """
    if result["problems"]:
        raise SchemaDriftError(entity.name, result["problems"])
