"""Companies, opportunities, opportunity roles, sales persons and custom objects.

They share one interface on Marketo (reference §7–10): ``dedupeBy`` instead of a lookup
field, ``seq`` on every result, 1017/1013/1036 for "exists", "not found" and "twice in one
batch". Records are JSON documents in the ``objects`` table, keyed by kind and external key.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo.envelope import MarketoError, skipped
from emulators.marketo.fields import (
    FieldDef,
    FieldValueError,
    ObjectType,
    describe_entry,
    normalize,
    to_json,
)
from emulators.marketo.leads import now_text
from emulators.marketo.store import Store, objects

if TYPE_CHECKING:
    from collections.abc import Sequence

OBJECT_ACTIONS = ("createOrUpdate", "createOnly", "updateOnly")
MAX_BATCH = 300
_SEP = "\x1f"


def dedupe_key(values: Sequence[Any]) -> str:
    """Return the stored external key; case-insensitive as Marketo compares GUIDs and emails."""
    return _SEP.join(str(v).lower() for v in values)


@dataclass
class ObjectOutcome:
    results: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0


def _existing(conn: Connection, otype: ObjectType, by_id: bool, keys: list[Any]) -> dict[Any, dict[str, Any]]:
    if not keys:
        return {}
    column = ("pk" if otype.id_field == "id" else "guid") if by_id else "dedupeKey"
    if column == "guid":
        keys = [str(k).lower() for k in keys]
    marks = ",".join(f":k{i}" for i in range(len(keys)))
    rows = (
        conn.execute(
            text(f"SELECT * FROM objects WHERE kind = :kind AND {column} IN ({marks})"),
            {"kind": otype.kind, **{f"k{i}": k for i, k in enumerate(keys)}},
        )
        .mappings()
        .all()
    )
    return {r[column]: dict(r) for r in rows}


def _prepare(otype: ObjectType, record: Any, by_id: bool) -> tuple[Any, dict[str, Any]]:
    """Validate one record; return (lookup key, normalised values).

    Raises:
        FieldValueError: The record must be skipped.
    """
    if not isinstance(record, dict):
        raise FieldValueError("1003", "Invalid data: each input record must be a JSON object")
    fmap = otype.field_map
    values: dict[str, Any] = {}
    for name, raw in record.items():
        f = fmap.get(name)
        if f is None:
            raise FieldValueError("1006", f"Field '{name}' not found")
        is_key = name in otype.dedupe_fields or name == otype.id_field
        if not f.updateable and not is_key:
            raise FieldValueError("1003", f"Invalid data: field '{name}' is not updateable")
        values[name] = normalize(f, raw)
    if by_id:
        if values.get(otype.id_field) is None:
            raise FieldValueError("1002", f"Missing value for the required parameter '{otype.id_field}'")
        key = values[otype.id_field]
        return (str(key).lower() if otype.id_field == "marketoGUID" else key), values
    missing = [d for d in otype.dedupe_fields if values.get(d) is None]
    if missing:
        raise FieldValueError("1002", f"Missing value for the required parameter '{missing[0]}'")
    return dedupe_key([values[d] for d in otype.dedupe_fields]), values


def _check_links(conn: Connection, otype: ObjectType, values: dict[str, Any]) -> None:
    for name, kind, target in otype.links:
        value = values.get(name)
        if value is None:
            continue
        if kind == "lead":
            found = conn.execute(text(f'SELECT 1 FROM leads WHERE "{target}" = :v'), {"v": value}).first()
        else:
            found = conn.execute(
                text("SELECT 1 FROM objects WHERE kind = :k AND dedupeKey = :v"),
                {"k": kind, "v": dedupe_key([value])},
            ).first()
        if found is None:
            if name == "externalSalesPersonId":
                raise FieldValueError("718", "ExternalSalesPersonID not found")
            raise FieldValueError(
                "1013", f"Object not found: no {kind} with {target} '{value}' for field '{name}'"
            )


def sync(
    conn: Connection,
    store: Store,
    otype: ObjectType,
    records: Sequence[Any],
    action: str = "createOrUpdate",
    dedupe_by: str = "dedupeFields",
) -> ObjectOutcome:
    """Create/update records of ``otype``; caller holds the store lock.

    Raises:
        MarketoError: Invalid ``action``/``dedupeBy`` for the whole request.
    """
    if action not in OBJECT_ACTIONS:
        raise MarketoError("1003", f"Invalid action '{action}'")
    if dedupe_by not in ("dedupeFields", "idField"):
        raise MarketoError("1003", f"Invalid dedupeBy '{dedupe_by}'")
    by_id = dedupe_by == "idField"
    if by_id and action != "updateOnly":
        raise MarketoError("1003", "dedupeBy 'idField' is only valid with action updateOnly")
    prepared: list[tuple[Any, dict[str, Any]] | FieldValueError] = []
    seen: set[Any] = set()
    for record in records:
        try:
            key, values = _prepare(otype, record, by_id)
            if key in seen:
                raise FieldValueError("1036", "Duplicate object found in input")
            seen.add(key)
            prepared.append((key, values))
        except FieldValueError as exc:
            prepared.append(exc)
    existing = _existing(conn, otype, by_id, [p[0] for p in prepared if isinstance(p, tuple)])
    now = now_text()
    out = ObjectOutcome()
    for seq, item in enumerate(prepared):
        if isinstance(item, FieldValueError):
            out.results.append(skipped(item.code, item.message, seq=seq))
            continue
        key, values = item
        row = existing.get(key)
        try:
            if row is not None and action == "createOnly":
                raise FieldValueError("1017", "Object already exists")
            if row is None and action == "updateOnly":
                raise FieldValueError("1013", "Object not found")
            _check_links(conn, otype, values)
            if row is None and otype.kind == "opportunity" and values.get("name") is None:
                raise FieldValueError("1003", "Invalid data: field 'name' must not be null")
        except FieldValueError as exc:
            out.results.append(skipped(exc.code, exc.message, seq=seq))
            continue
        values = {k: v for k, v in values.items() if k != otype.id_field}
        if row is None:
            pk = store.take_object_pks(1)
            guid = str(uuid.uuid4()) if otype.id_field == "marketoGUID" else str(pk)
            conn.execute(
                insert(objects),
                {
                    "pk": pk,
                    "kind": otype.kind,
                    "guid": guid,
                    "dedupeKey": key,
                    "data": json.dumps(values),
                    "createdAt": now,
                    "updatedAt": now,
                },
            )
            status, ident = "created", pk if otype.id_field == "id" else guid
        else:
            data = json.loads(row["data"])
            changed = {k: v for k, v in values.items() if data.get(k) != v}
            if changed:
                data.update(changed)
                conn.execute(
                    text("UPDATE objects SET data = :d, updatedAt = :u WHERE pk = :pk"),
                    {"d": json.dumps(data), "u": now, "pk": row["pk"]},
                )
            status, ident = "updated", row["pk"] if otype.id_field == "id" else row["guid"]
        out.written += 1
        out.results.append({"seq": seq, "status": status, otype.id_field: ident})
    return out


def resolve_fields(otype: ObjectType, names: Sequence[str]) -> list[FieldDef]:
    """Return the field definitions for ``fields`` (default fields when empty).

    Raises:
        MarketoError: 1006 naming the first unknown field.
    """
    fmap = otype.field_map
    wanted = list(dict.fromkeys(names)) or list(otype.default_fields)
    for name in wanted:
        if name not in fmap:
            raise MarketoError("1006", f"Field '{name}' not found")
    return [fmap[n] for n in wanted]


def filter_group(otype: ObjectType, filter_type: str) -> tuple[str, ...]:
    """Resolve ``filterType`` (with the ``idField``/``dedupeFields`` aliases) to a searchable group.

    Raises:
        MarketoError: 1003 when the field is not searchable.
    """
    if filter_type == "idField":
        return (otype.id_field,)
    if filter_type == "dedupeFields":
        return otype.dedupe_fields
    group = tuple(p.strip() for p in filter_type.split(","))
    if group not in otype.searchable:
        raise MarketoError("1003", f"Invalid filterType '{filter_type}' for {otype.name}")
    return group


def query(
    conn: Connection,
    otype: ObjectType,
    group: tuple[str, ...],
    keys: Sequence[Sequence[Any]],
    fields: Sequence[FieldDef],
    batch: int,
    offset: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Return one page of records matching any of ``keys`` (tuples of values for ``group``)."""
    if not keys:
        raise MarketoError("701", "filterValues cannot be blank")
    if len(keys) > MAX_BATCH:
        raise MarketoError("1003", f"Too many filterValues: {len(keys)} (max {MAX_BATCH})")
    fmap = otype.field_map
    norm: list[Any] = []
    for key in keys:
        try:
            norm.append(tuple(normalize(fmap[g], v) for g, v in zip(group, key, strict=True)))
        except (FieldValueError, ValueError):
            continue
    if not norm:
        return [], False
    args: dict[str, Any] = {"kind": otype.kind}
    if group == otype.dedupe_fields:
        column, vals = "dedupeKey", [dedupe_key(k) for k in norm]
    elif group == (otype.id_field,):
        column = "pk" if otype.id_field == "id" else "guid"
        vals = [k[0] if column == "pk" else str(k[0]).lower() for k in norm]
    else:
        column = f"lower(json_extract(data, '$.{group[0]}'))"
        vals = [str(k[0]).lower() for k in norm]
    marks = ",".join(f":v{i}" for i in range(len(vals)))
    args.update({f"v{i}": v for i, v in enumerate(vals)})
    where = f"kind = :kind AND {column} IN ({marks})"
    total = conn.execute(text(f"SELECT COUNT(*) FROM objects WHERE {where}"), args).scalar() or 0
    rows = (
        conn.execute(
            text(f"SELECT * FROM objects WHERE {where} ORDER BY pk LIMIT :lim OFFSET :off"),
            {**args, "lim": batch, "off": offset},
        )
        .mappings()
        .all()
    )
    return [dict(render(otype, r, fields), seq=i) for i, r in enumerate(rows)], offset + len(rows) < total


def render(otype: ObjectType, row: Any, fields: Sequence[FieldDef]) -> dict[str, Any]:
    data = json.loads(row["data"])
    data["createdAt"], data["updatedAt"] = row["createdAt"], row["updatedAt"]
    data[otype.id_field] = row["pk"] if otype.id_field == "id" else row["guid"]
    return {f.name: to_json(f, data[f.name]) for f in fields if data.get(f.name) is not None}


def delete(
    conn: Connection, otype: ObjectType, records: Sequence[Any], delete_by: str
) -> list[dict[str, Any]]:
    """Delete by ``dedupeFields`` or ``idField``; unknown records are skipped with 1013."""
    if delete_by not in ("dedupeFields", "idField"):
        raise MarketoError("1003", f"Invalid deleteBy '{delete_by}'")
    by_id = delete_by == "idField"
    results = []
    for seq, record in enumerate(records):
        try:
            key, _values = _prepare(otype, record, by_id)
        except FieldValueError as exc:
            results.append(skipped(exc.code, exc.message, seq=seq))
            continue
        row = _existing(conn, otype, by_id, [key]).get(key)
        if row is None:
            results.append(skipped("1013", "Object not found", seq=seq))
            continue
        conn.execute(text("DELETE FROM objects WHERE pk = :pk"), {"pk": row["pk"]})
        ident = row["pk"] if otype.id_field == "id" else row["guid"]
        results.append({"seq": seq, "status": "deleted", otype.id_field: ident})
    return results


def describe(otype: ObjectType) -> dict[str, Any]:
    """Describe result entry of ``otype`` (reference §7–10)."""
    fields = [describe_entry(f) for f in otype.fields]
    out: dict[str, Any] = {
        "name": otype.name,
        "displayName": otype.name,
        "description": f"{otype.name} object",
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": "2024-01-01T00:00:00Z",
        "idField": otype.id_field,
        "dedupeFields": list(otype.dedupe_fields),
        "searchableFields": [list(g) for g in otype.searchable],
        "fields": fields,
    }
    if otype.api_name:
        out.update(
            {
                "displayName": otype.plural_name or otype.name,
                "pluralName": otype.plural_name,
                "relationships": [
                    {
                        "field": f.name,
                        "type": "child",
                        "relatedTo": {"name": f.related[0], "field": f.related[1]},
                    }
                    for f in otype.fields
                    if f.data_type == "link" and f.related is not None
                ],
            }
        )
    return out
