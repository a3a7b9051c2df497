"""What is read of a Dataverse table: the mapped columns, the derived ones (through ``$expand``),
rows read by primary key, and the keys a run already staged."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_sync.config import Direction, EntityConfig, MarketoObject
from crm_sync.engine.staging import rows_frame

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from crm_sync.engine.clients import DynamicsClient
    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)

ID_QUERY_CHUNK = 25  # keys per $filter, well under URL length limits


def dynamics_columns(entity: EntityConfig) -> list[str]:
    """The Dataverse columns an extract selects: key, mapped D→M columns, lookups, sync filter,
    the person lifecycle's columns (origin of a qualified record, merge flag and master) and the
    modified time."""
    cols = [entity.dynamics.key]
    cols += [f.dynamics for f in entity.fields_for(Direction.D2M)]
    cols += [lk.dynamics for lk in entity.lookups]
    if entity.dynamics.filter_column:
        cols.append(entity.dynamics.filter_column)
    if entity.converted_from is not None:
        cols.append(entity.converted_from.column)
    if entity.merges is not None:
        cols += [entity.merges.flag, entity.merges.master]
    if entity.dynamics.modified_column:  # when a change was made: the run's latency figures
        cols.append(entity.dynamics.modified_column)
    return list(dict.fromkeys(cols))


@dataclass(frozen=True)
class DerivedColumn:
    """A column the entity files map that Dataverse does not have, read through ``$expand``.

    Attributes:
        expand: The ``$expand`` option that brings the data.
        value: Turns the expanded row into the column's value.
    """

    expand: str
    value: Callable[[Mapping[str, Any]], Any]


def _member_ids(row: Mapping[str, Any]) -> list[str]:
    members = row.get("teammembership_association") or []
    return sorted(str(m["systemuserid"]).lower() for m in members if m.get("systemuserid"))


def _customer_parent_account(row: Mapping[str, Any]) -> Any:
    contact = row.get("customerid_contact")
    return contact.get("_parentcustomerid_value") if isinstance(contact, Mapping) else None


# Derived columns by name (team.yaml, opportunity.yaml); change tracking cannot $expand, so
# they are read for the changed rows by id afterwards.
DERIVED_COLUMNS: dict[str, DerivedColumn] = {
    "member_ids": DerivedColumn("teammembership_association($select=systemuserid)", _member_ids),
    "customer_parent_account": DerivedColumn(
        "customerid_contact($select=_parentcustomerid_value)", _customer_parent_account
    ),
}


def split_derived(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns Dataverse can select, derived columns)."""
    return [c for c in columns if c not in DERIVED_COLUMNS], [c for c in columns if c in DERIVED_COLUMNS]


def _by_id_filter(key: str, guids: Sequence[str]) -> str:
    return " or ".join(f"{key} eq {g}" for g in guids)


def read_rows_by_id(
    entity: EntityConfig, client: DynamicsClient, guids: Sequence[str], select: Sequence[str]
) -> list[dict[str, Any]]:
    """Current rows of ``guids`` with the ``select`` columns, derived columns included."""
    plain, derived = split_derived(select)
    expand = ",".join(DERIVED_COLUMNS[c].expand for c in derived) or None
    rows: list[dict[str, Any]] = []
    for start in range(0, len(guids), ID_QUERY_CHUNK):
        where = _by_id_filter(entity.dynamics.key, guids[start : start + ID_QUERY_CHUNK])
        for page in client.query(entity.dynamics.entity_set, select=plain, filter=where, expand=expand):
            for row in page:
                row.update({c: DERIVED_COLUMNS[c].value(row) for c in derived})
                rows.append(row)
    return rows


def add_derived(
    entity: EntityConfig, client: DynamicsClient, records: list[dict[str, Any]], derived: Sequence[str]
) -> list[dict[str, Any]]:
    """Fill the derived columns of changed rows (one extra read per 25 rows)."""
    if not derived or not records:
        return records
    key = entity.dynamics.key
    found = {
        str(r[key]).lower(): r
        for r in read_rows_by_id(entity, client, [str(r[key]) for r in records], [key, *derived])
    }
    for record in records:
        extra = found.get(str(record[key]).lower(), {})
        record.update({c: extra.get(c) for c in derived})
    return records


def person_fields(entities: Iterable[EntityConfig]) -> list[str]:
    """Marketo person fields the shared feed reads: ids, keys, sync-owned fields, M→D fields."""
    names: list[str] = []
    for e in entities:
        if e.marketo.object is not MarketoObject.LEAD or not e.direction.includes(Direction.M2D):
            continue
        m = e.marketo
        names += [m.key, *(f for f in (m.type_field, m.deleted_field, m.email_field, m.sync_flag_field) if f)]
        names += [f.marketo for f in e.fields_for(Direction.M2D)]
    return list(dict.fromkeys(n for n in names if n != "id"))


def extracted_keys(entity: EntityConfig, ctx: RunContext, part: dict[str, Any] | None) -> set[str]:
    """Keys of the Dataverse rows this run already staged."""
    keys: set[str] = set()
    for ref in (part or {}).get("batches", []):
        column = ctx.staging.read_frame(ref)[entity.dynamics.key]
        keys |= {str(k).strip().lower() for k in column.dropna()}
    return keys


def stage_rows(
    entity: EntityConfig, ctx: RunContext, dynamics: DynamicsClient, guids: Sequence[str], name: str
) -> dict[str, Any] | None:
    """Read the current Dataverse rows of ``guids`` (by primary key) and stage them as one batch."""
    columns = dynamics_columns(entity)
    rows = read_rows_by_id(entity, dynamics, guids, columns)
    if not rows:
        return None
    folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "extract"
    return ctx.staging.write_frame(folder, name, rows_frame(rows, columns)).to_dict()
