"""Lead operations: query by filter, sync (create/update/upsert), delete, merge.

Sync follows the table of reference §3.3 record by record, in input order, so a key that
appears twice in one batch is created by the first record and updated by the second, as on
Marketo. Each written lead gets its activities (12 on create, one 13 per changed field).
Field names are checked against the database's :class:`~emulators.marketo.lead_schema.LeadSchema`,
so a field bare mode hides is unknown (1006) until it is created through the API.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from emulators.marketo import activities, members
from emulators.marketo.envelope import MarketoError, skipped
from emulators.marketo.fields import (
    FieldDef,
    FieldValueError,
    format_datetime,
    normalize,
    to_json,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from emulators.marketo.lead_schema import LeadSchema
    from emulators.marketo.store import Store

ACTIONS = ("createOrUpdate", "createOnly", "updateOnly", "createDuplicate")
MAX_BATCH = 300


def now_text() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


def resolve_fields(schema: LeadSchema, names: Sequence[str], default: Sequence[str]) -> list[FieldDef]:
    """Return the field definitions for a ``fields`` parameter.

    Raises:
        MarketoError: 1006 naming the first unknown (or bare-hidden) field, for the whole call:
            whether Marketo answers an unknown ``fields`` name at response level or with a
            warning is unconfirmed (reference §3.1); response level is the stricter reading.
    """
    wanted = list(names) or [n for n in default if schema.get(n) is not None]
    unknown = [n for n in wanted if schema.get(n) is None]
    if unknown:
        raise MarketoError("1006", f"Field '{unknown[0]}' not found")
    return [schema.by_name[n] for n in dict.fromkeys(wanted)]


def render(row: Any, fields: Sequence[FieldDef]) -> dict[str, Any]:
    """Return a lead as the API shows it: only requested fields, nulls left out."""
    out: dict[str, Any] = {}
    for f in fields:
        value = row[f.name]
        if value is not None:
            out[f.name] = to_json(f, value)
    return out


def _filter_values(field_def: FieldDef, values: Sequence[Any]) -> list[Any]:
    out = []
    for raw in values:
        try:
            value = normalize(field_def, raw)
        except FieldValueError:
            continue  # a value that cannot match this field matches no lead
        if value is not None:
            out.append(value)
    return out


def query(
    conn: Connection,
    schema: LeadSchema,
    filter_type: str,
    values: Sequence[Any],
    fields: Sequence[FieldDef],
    batch: int,
    offset: int,
    max_matches: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Return one page of leads whose ``filter_type`` equals any of ``values``, and whether more follow.

    Raises:
        MarketoError: 1011/1006 for an unusable filter field, 1003 for too many values or matches.
    """
    field_def = _key_field(schema, filter_type)
    if not values:
        raise MarketoError("701", "filterValues cannot be blank")
    if len(values) > MAX_BATCH:
        raise MarketoError("1003", f"Too many filterValues: {len(values)} (max {MAX_BATCH})")
    keys = _filter_values(field_def, values)
    if not keys:
        return [], False
    # Plain DB-API "?" parameters: SQLAlchemy's text() would re-parse and re-compile a statement
    # with 300 named parameters on every call, which dominated the read path.
    cols = ",".join(f'"{f.name}"' for f in fields)
    sql = (
        f'SELECT {cols} FROM leads WHERE "{filter_type}" IN ({",".join("?" * len(keys))}) '
        f"ORDER BY id LIMIT {int(max_matches) + 1}"
    )
    rows = conn.exec_driver_sql(sql, tuple(keys)).fetchall()
    if len(rows) > max_matches:
        raise MarketoError("1003", "Too many results match the filter")
    page = rows[offset : offset + batch]
    return [_render_tuple(r, fields) for r in page], offset + len(page) < len(rows)


def _key_field(schema: LeadSchema, name: str) -> FieldDef:
    """The field a filterType or lookupField names.

    Raises:
        MarketoError: 1006 when unknown or hidden, 1011 when not searchable.
    """
    found = schema.get(name)
    if found is None:
        raise MarketoError("1006", f"Field '{name}' not found")
    if not found.searchable:
        raise MarketoError("1011", f"Field '{name}' not supported")
    return found


def _render_tuple(row: Sequence[Any], fields: Sequence[FieldDef]) -> dict[str, Any]:
    return {f.name: to_json(f, v) for f, v in zip(fields, row, strict=True) if v is not None}


def get_by_id(conn: Connection, lead_id: int, fields: Sequence[FieldDef]) -> list[dict[str, Any]]:
    cols = ",".join(f'"{f.name}"' for f in fields)
    row = conn.execute(text(f"SELECT {cols} FROM leads WHERE id = :id"), {"id": lead_id}).mappings().first()
    return [render(row, fields)] if row else []


@dataclass
class SyncOutcome:
    """Per-record results plus counts for the stats."""

    results: list[dict[str, Any]] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    skipped: int = 0


def _prepare(schema: LeadSchema, record: Any, action: str, lookup: str) -> dict[str, Any]:
    """Validate one input record and return its normalised values.

    Raises:
        FieldValueError: The record must be skipped (code and message say why); a field that
            does not exist, or that bare mode hides, skips it with 1006 (reference §2.5).
    """
    if not isinstance(record, dict):
        raise FieldValueError("1003", "Invalid data: each input record must be a JSON object")
    values: dict[str, Any] = {}
    for name, raw in record.items():
        f = schema.get(name)
        if f is None:
            raise FieldValueError("1006", f"Field '{name}' not found")
        if name == "id":
            if action != "updateOnly":
                raise FieldValueError("1003", "Invalid data: 'id' is only allowed with action updateOnly")
        elif not f.updateable:
            raise FieldValueError("1003", f"Invalid data: field '{name}' is not updateable")
        values[name] = normalize(f, raw)
    if action != "createDuplicate" and values.get(lookup) is None:
        raise FieldValueError("1002", f"Missing value for the required parameter '{lookup}'")
    return values


def _key(value: Any) -> Any:
    # Text columns compare case-insensitively (NOCASE), so the in-memory map must as well.
    return value.lower() if isinstance(value, str) else value


def sync(
    conn: Connection,
    store: Store,
    records: Sequence[Any],
    action: str = "createOrUpdate",
    lookup: str = "email",
    reason: str = "Web service API",
) -> SyncOutcome:
    """Create and update leads as Sync Leads does; caller holds the store lock.

    Raises:
        MarketoError: The request as a whole is invalid (action, lookup field, batch size).
    """
    if action not in ACTIONS:
        raise MarketoError("1003", f"Invalid action '{action}'")
    schema = store.lead_schema
    _key_field(schema, lookup)
    if lookup == "id" and action != "updateOnly":
        raise MarketoError("1003", "lookupField 'id' is only allowed with action updateOnly")

    prepared: list[dict[str, Any] | FieldValueError] = []
    for record in records:
        try:
            prepared.append(_prepare(schema, record, action, lookup))
        except FieldValueError as exc:
            prepared.append(exc)

    matches = _existing(
        conn,
        schema,
        lookup,
        [p[lookup] for p in prepared if isinstance(p, dict) and p.get(lookup) is not None],
    )
    now = now_text()
    out = SyncOutcome()
    inserts: list[dict[str, Any]] = []
    created_ids: set[int] = set()
    changed_cols: dict[int, set[str]] = defaultdict(set)
    rows_by_id: dict[int, dict[str, Any]] = {}
    act_rows: list[dict[str, Any]] = []

    for item in prepared:
        if isinstance(item, FieldValueError):
            out.results.append(skipped(item.code, item.message))
            out.skipped += 1
            continue
        found = [] if action == "createDuplicate" else matches.get(_key(item[lookup]), [])
        if action in ("createOnly",) and found:
            out.results.append(skipped("1005", "Lead already exists"))
            out.skipped += 1
        elif action == "updateOnly" and not found:
            out.results.append(skipped("1004", "Lead not found"))
            out.skipped += 1
        elif len(found) > 1:
            out.results.append(skipped("1007", "Multiple leads match the lookup criteria"))
            out.skipped += 1
        elif found:
            row = found[0]
            changes = [
                activities.FieldChange(row["id"], k, row[k], v)
                for k, v in item.items()
                # The lookup value matched case-insensitively: it is the key, not a change.
                if k != "id" and k != lookup and row.get(k) != v
            ]
            if changes:
                for ch in changes:
                    row[ch.field] = ch.new
                row["updatedAt"] = now
                if row["id"] not in created_ids:
                    changed_cols[row["id"]].update(ch.field for ch in changes)
                    changed_cols[row["id"]].add("updatedAt")
                    rows_by_id[row["id"]] = row
                act_rows.extend(activities.change_rows(schema, changes, now, reason))
            out.results.append({"id": row["id"], "status": "updated"})
            out.updated += 1
        else:
            row = dict.fromkeys(schema.columns)
            row.update(item)
            row["id"] = store.take_lead_ids(1)
            row["leadPartitionId"] = row.get("leadPartitionId") or 1
            row["createdAt"] = row["updatedAt"] = now
            inserts.append(row)
            created_ids.add(row["id"])
            if item.get(lookup) is not None:
                matches.setdefault(_key(item[lookup]), []).append(row)
            act_rows.extend(activities.new_lead_rows([row["id"]], now, reason))
            out.results.append({"id": row["id"], "status": "created"})
            out.created += 1

    _insert(conn, schema.columns, inserts)
    _apply_updates(conn, rows_by_id, changed_cols)
    activities.append(conn, store.take_activity_ids(len(act_rows)), act_rows)
    return out


def _insert(conn: Connection, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Insert new lead rows naming every column (custom fields made through the API included)."""
    if not rows:
        return
    names = ",".join(f'"{c}"' for c in columns)
    conn.exec_driver_sql(
        f"INSERT INTO leads ({names}) VALUES ({','.join('?' * len(columns))})",
        [tuple(r[c] for c in columns) for r in rows],
    )


def _existing(
    conn: Connection, schema: LeadSchema, lookup: str, values: list[Any]
) -> dict[Any, list[dict[str, Any]]]:
    found: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    unique = list(dict.fromkeys(values))
    columns = schema.columns
    # Named columns, not *: a database migrated by Store may hold them in another order.
    selected = ",".join(f'"{c}"' for c in columns)
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        rows = conn.exec_driver_sql(
            f'SELECT {selected} FROM leads WHERE "{lookup}" IN ({",".join("?" * len(chunk))}) ORDER BY id',
            tuple(chunk),
        ).fetchall()
        for r in rows:
            record = schema.coerce_row(dict(zip(columns, r, strict=True)))
            found[_key(record[lookup])].append(record)
    return found


def _apply_updates(conn: Connection, rows: dict[int, dict[str, Any]], changed: dict[int, set[str]]) -> None:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for lead_id, cols in changed.items():
        group = tuple(sorted(cols))
        groups[group].append({"_id": lead_id, **{c: rows[lead_id][c] for c in group}})
    for names, params in groups.items():
        sets = ",".join(f'"{c}" = :{c}' for c in names)
        conn.execute(text(f"UPDATE leads SET {sets} WHERE id = :_id"), params)


def delete(conn: Connection, store: Store, ids: Sequence[Any]) -> list[dict[str, Any]]:
    """Delete leads by id; unknown ids are skipped with 1004. Caller holds the store lock."""
    results: list[dict[str, Any]] = []
    gone: list[tuple[int, str]] = []
    now = now_text()
    for raw in ids:
        try:
            lead_id = int(raw)
        except (TypeError, ValueError):
            results.append(skipped("1003", f"Invalid data: id '{raw}' is not an integer"))
            continue
        row = conn.execute(
            text("SELECT firstName, lastName FROM leads WHERE id = :id"), {"id": lead_id}
        ).first()
        if row is None:
            results.append(skipped("1004", "Lead not found", id=lead_id))
            continue
        conn.execute(text("DELETE FROM leads WHERE id = :id"), {"id": lead_id})
        gone.append((lead_id, " ".join(p for p in (row[0], row[1]) if p)))
        results.append({"id": lead_id, "status": "deleted"})
    members.forget_leads(conn, [lead_id for lead_id, _ in gone])
    rows = activities.delete_rows(gone, now)
    activities.append(conn, store.take_activity_ids(len(rows)), rows)
    return results


MAX_MERGE_LOSERS = 25  # reference §3.6 (more answer 1080)
_NOT_MERGED = {"id", "createdAt", "updatedAt", "leadPartitionId"}


def merge(conn: Connection, store: Store, winner_id: int, loser_ids: Sequence[int]) -> None:
    """Merge ``loser_ids`` into ``winner_id``; caller holds the store lock.

    The winner keeps its non-empty values and takes a loser's value where its own is empty
    (losers in the order given); an unsubscribe on any of them stays on the survivor (Durable
    Unsubscribe); the losers are deleted. The winner gets a Change Data Value per field it took
    and a "Merge Leads" activity naming the merged ids; each loser a Delete Lead (whether a
    merge shows in the deleted-leads feed is unconfirmed; it is a delete here).

    Raises:
        MarketoError: 1003 for no loser, the winner among them or a repeated id; 1080 for more
            than 25 losers; 1004 when the winner or a loser does not exist.
    """
    losers = list(dict.fromkeys(int(i) for i in loser_ids))
    if not losers:
        raise MarketoError("1003", "leadIds cannot be blank")
    if winner_id in losers:
        raise MarketoError("1003", f"Lead {winner_id} cannot be merged into itself")
    if len(losers) > MAX_MERGE_LOSERS:
        raise MarketoError("1080", f"At most {MAX_MERGE_LOSERS} leads can be merged in one request")
    ids = [winner_id, *losers]
    schema = store.lead_schema
    found = {
        int(r["id"]): schema.coerce_row(dict(r))
        for r in conn.execute(
            text(f"SELECT * FROM leads WHERE id IN ({','.join(str(i) for i in ids)})")
        ).mappings()
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise MarketoError("1004", f"Lead(s) not found: {','.join(str(i) for i in missing)}")
    winner = found[winner_id]
    now = now_text()
    changes: list[activities.FieldChange] = []
    for column in (f.name for f in schema.fields):
        if column in _NOT_MERGED:
            continue
        if column == "unsubscribed":
            if not winner.get(column) and any(found[i].get(column) for i in losers):
                changes.append(activities.FieldChange(winner_id, column, winner.get(column), True))
            continue
        if winner.get(column) not in (None, ""):
            continue
        value = next((found[i][column] for i in losers if found[i].get(column) not in (None, "")), None)
        if value is not None:
            changes.append(activities.FieldChange(winner_id, column, winner.get(column), value))
    for ch in changes:
        winner[ch.field] = ch.new
    if changes:
        winner["updatedAt"] = now
        _apply_updates(conn, {winner_id: winner}, {winner_id: {c.field for c in changes} | {"updatedAt"}})
    names = {i: " ".join(p for p in (found[i].get("firstName"), found[i].get("lastName")) if p) for i in ids}
    conn.execute(text(f"DELETE FROM leads WHERE id IN ({','.join(str(i) for i in losers)})"))
    members.merge_memberships(conn, winner_id, losers)
    rows = activities.change_rows(schema, changes, now, "Merge Leads")
    rows += activities.merge_rows(winner_id, names[winner_id], losers, now, bool(changes))
    rows += activities.delete_rows([(i, names[i]) for i in losers], now)
    activities.append(conn, store.take_activity_ids(len(rows)), rows)
