"""Lead operations: query by filter, sync (create/update/upsert), delete, describe.

Sync follows the table of reference §3.3 record by record, in input order, so a key that
appears twice in one batch is created by the first record and updated by the second, as on
Marketo. Each written lead gets its activities (12 on create, one 13 per changed field).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo import activities
from emulators.marketo.envelope import MarketoError, skipped
from emulators.marketo.fields import (
    LEAD_FIELD_IDS,
    LEAD_FIELD_MAP,
    LEAD_FIELDS,
    LEAD_SEARCHABLE,
    FieldDef,
    FieldValueError,
    format_datetime,
    normalize,
    to_json,
)
from emulators.marketo.store import Store, leads

if TYPE_CHECKING:
    from collections.abc import Sequence

ACTIONS = ("createOrUpdate", "createOnly", "updateOnly", "createDuplicate")
MAX_BATCH = 300
_COLUMNS = [f.name for f in LEAD_FIELDS]


def now_text() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


def resolve_fields(names: Sequence[str], default: Sequence[str]) -> list[FieldDef]:
    """Return the field definitions for a ``fields`` parameter.

    Raises:
        MarketoError: 1006 naming the first unknown field.
    """
    wanted = list(names) or list(default)
    unknown = [n for n in wanted if n not in LEAD_FIELD_MAP]
    if unknown:
        raise MarketoError("1006", f"Field '{unknown[0]}' not found")
    return [LEAD_FIELD_MAP[n] for n in dict.fromkeys(wanted)]


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
    if filter_type not in LEAD_FIELD_MAP:
        raise MarketoError("1006", f"Field '{filter_type}' not found")
    if filter_type not in LEAD_SEARCHABLE:
        raise MarketoError("1011", f"Field '{filter_type}' not supported")
    if not values:
        raise MarketoError("701", "filterValues cannot be blank")
    if len(values) > MAX_BATCH:
        raise MarketoError("1003", f"Too many filterValues: {len(values)} (max {MAX_BATCH})")
    keys = _filter_values(LEAD_FIELD_MAP[filter_type], values)
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


def _prepare(record: Any, action: str, lookup: str) -> dict[str, Any]:
    """Validate one input record and return its normalised values.

    Raises:
        FieldValueError: The record must be skipped (code and message say why).
    """
    if not isinstance(record, dict):
        raise FieldValueError("1003", "Invalid data: each input record must be a JSON object")
    values: dict[str, Any] = {}
    for name, raw in record.items():
        f = LEAD_FIELD_MAP.get(name)
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
    if lookup not in LEAD_FIELD_MAP:
        raise MarketoError("1006", f"Field '{lookup}' not found")
    if lookup not in LEAD_SEARCHABLE:
        raise MarketoError("1011", f"Field '{lookup}' not supported")
    if lookup == "id" and action != "updateOnly":
        raise MarketoError("1003", "lookupField 'id' is only allowed with action updateOnly")

    prepared: list[dict[str, Any] | FieldValueError] = []
    for record in records:
        try:
            prepared.append(_prepare(record, action, lookup))
        except FieldValueError as exc:
            prepared.append(exc)

    matches = _existing(
        conn, lookup, [p[lookup] for p in prepared if isinstance(p, dict) and p.get(lookup) is not None]
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
                act_rows.extend(activities.change_rows(changes, now, reason))
            out.results.append({"id": row["id"], "status": "updated"})
            out.updated += 1
        else:
            row = dict.fromkeys(_COLUMNS)
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

    if inserts:
        conn.execute(insert(leads), inserts)
    _apply_updates(conn, rows_by_id, changed_cols)
    activities.append(conn, store.take_activity_ids(len(act_rows)), act_rows)
    return out


def _existing(conn: Connection, lookup: str, values: list[Any]) -> dict[Any, list[dict[str, Any]]]:
    found: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    unique = list(dict.fromkeys(values))
    columns = [c.name for c in leads.columns]
    # Named columns, not *: a database migrated by Store may hold them in another order.
    selected = ",".join(f'"{c}"' for c in columns)
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        rows = conn.exec_driver_sql(
            f'SELECT {selected} FROM leads WHERE "{lookup}" IN ({",".join("?" * len(chunk))}) ORDER BY id',
            tuple(chunk),
        ).fetchall()
        for r in rows:
            record = dict(zip(columns, r, strict=True))
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
    found = {
        int(r["id"]): dict(r)
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
    for column in _COLUMNS:
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
    rows = activities.change_rows(changes, now, "Merge Leads")
    rows += activities.merge_rows(winner_id, names[winner_id], losers, now, bool(changes))
    rows += activities.delete_rows([(i, names[i]) for i in losers], now)
    activities.append(conn, store.take_activity_ids(len(rows)), rows)


def describe() -> list[dict[str, Any]]:
    """Result of ``GET /rest/v1/leads/describe.json`` (one entry per field)."""
    out = []
    for f in LEAD_FIELDS:
        entry: dict[str, Any] = {
            "id": LEAD_FIELD_IDS[f.name],
            "displayName": f.display,
            "dataType": f.data_type,
        }
        if f.max_length is not None:
            entry["length"] = f.max_length
        entry["rest"] = {"name": f.name, "readOnly": not f.updateable}
        entry["soap"] = {"name": f.name[0].upper() + f.name[1:], "readOnly": not f.updateable}
        out.append(entry)
    return out


def describe2() -> list[dict[str, Any]]:
    """Result of ``GET /rest/v1/leads/describe2.json``."""
    fields = []
    for f in LEAD_FIELDS:
        entry: dict[str, Any] = {
            "name": f.name,
            "displayName": f.display,
            "dataType": f.data_type,
            "updateable": f.updateable,
            "crmManaged": False,
        }
        if f.max_length is not None:
            entry["length"] = f.max_length
        fields.append(entry)
    return [{"name": "API Lead", "searchableFields": [[n] for n in LEAD_SEARCHABLE], "fields": fields}]
