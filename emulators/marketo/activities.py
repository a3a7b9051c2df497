"""Activity log: New Lead (12), Change Data Value (13), Merge Leads (32), Delete Lead (37), feeds.

Program status changes add Change Status in Progression (104, ``members``); the admin area can
lay down any listed type at past dates (``history``). The types themselves: ``activity_types``.

Every API write of a lead appends activities (reference §15.8). A paging token encodes the id
of the last activity a client has seen, so "changes since a token" is exactly the activities
with a larger id: nothing is returned twice and nothing is skipped, whatever the clock does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, text

from emulators.marketo.activity_types import ACTIVITY_TYPES as ACTIVITY_TYPES
from emulators.marketo.activity_types import CHANGE_DATA_VALUE, DELETE_LEAD, MERGE_LEADS, NEW_LEAD
from emulators.marketo.activity_types import CHANGE_STATUS_IN_PROGRESSION as CHANGE_STATUS_IN_PROGRESSION
from emulators.marketo.envelope import MarketoError, decode_token, encode_token
from emulators.marketo.store import activities

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from emulators.marketo.lead_schema import LeadSchema

TOKEN_KIND = "act"


@dataclass(frozen=True)
class FieldChange:
    """One changed field of one lead."""

    lead_id: int
    field: str
    old: Any
    new: Any


def append(conn: Connection, first_id: int, rows: list[dict[str, Any]]) -> None:
    """Insert activity rows, numbering them from ``first_id``."""
    if not rows:
        return
    for offset, row in enumerate(rows):
        row["id"] = first_id + offset
    conn.execute(insert(activities), rows)


def new_lead_rows(lead_ids: Iterable[int], when: str, source: str) -> list[dict[str, Any]]:
    attrs = json.dumps({"attributes": [{"name": "Source Type", "value": source}], "fields": []})
    return [
        {
            "leadId": i,
            "activityDate": when,
            "activityTypeId": NEW_LEAD,
            "primaryAttributeValueId": i,
            "primaryAttributeValue": str(i),
            "fieldName": None,
            "payload": attrs,
        }
        for i in lead_ids
    ]


def change_rows(
    schema: LeadSchema, changes: Sequence[FieldChange], when: str, reason: str
) -> list[dict[str, Any]]:
    """Change Data Value (13) rows, one per changed field, with the field's id and display name."""
    rows = []
    for ch in changes:
        field_id = schema.ids[ch.field]
        payload = {
            "fields": [{"id": field_id, "name": ch.field, "newValue": ch.new, "oldValue": ch.old}],
            "attributes": [
                {"name": "Reason", "value": reason},
                {"name": "Source", "value": reason},
                {"name": "Lead ID", "value": ch.lead_id},
            ],
        }
        rows.append(
            {
                "leadId": ch.lead_id,
                "activityDate": when,
                "activityTypeId": CHANGE_DATA_VALUE,
                "primaryAttributeValueId": field_id,
                "primaryAttributeValue": schema.by_name[ch.field].display,
                "fieldName": ch.field,
                "payload": json.dumps(payload),
            }
        )
    return rows


def merge_rows(
    winner: int, name: str, losers: Sequence[int], when: str, updated: bool
) -> list[dict[str, Any]]:
    """The "Merge Leads" activity on the surviving lead, naming the merged ids."""
    attrs = [
        {"name": "Merge IDs", "value": ",".join(str(i) for i in losers)},
        {"name": "Merged in Sales", "value": False},
        {"name": "Merge Source", "value": "API"},
        {"name": "Master Updated", "value": updated},
    ]
    return [
        {
            "leadId": winner,
            "activityDate": when,
            "activityTypeId": MERGE_LEADS,
            "primaryAttributeValueId": winner,
            "primaryAttributeValue": name,
            "fieldName": None,
            "payload": json.dumps({"attributes": attrs, "fields": []}),
        }
    ]


def delete_rows(deleted: Sequence[tuple[int, str]], when: str) -> list[dict[str, Any]]:
    payload = json.dumps({"attributes": [], "fields": []})
    return [
        {
            "leadId": lead_id,
            "activityDate": when,
            "activityTypeId": DELETE_LEAD,
            "primaryAttributeValueId": lead_id,
            "primaryAttributeValue": name,
            "fieldName": None,
            "payload": payload,
        }
        for lead_id, name in deleted
    ]


def token_since(conn: Connection, since: str) -> str:
    """Return the paging token for activities at or after ``since`` (normalised ``...Z``)."""
    first = conn.execute(
        text("SELECT MIN(id) FROM activities WHERE activityDate >= :since"), {"since": since}
    ).scalar()
    if first is None:
        last = conn.execute(text("SELECT MAX(id) FROM activities")).scalar()
        return encode_token(TOKEN_KIND, int(last or 0))
    return encode_token(TOKEN_KIND, int(first) - 1)


def page(
    conn: Connection,
    token: str,
    type_ids: Sequence[int],
    batch: int,
    lead_ids: Sequence[int] = (),
    fields: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], str, bool]:
    """Return one page of activities after ``token``: (records, next token, more).

    Args:
        conn: Open connection.
        token: Position token from ``pagingtoken`` or a previous page.
        type_ids: Activity types wanted.
        batch: Page size (≤ 300).
        lead_ids: Only activities of these leads, when given.
        fields: Lead changes mode: Change Data Value activities only for these fields (New
            Lead activities always pass).
    """
    after = decode_token(token, TOKEN_KIND)
    where = ["id > ?", f"activityTypeId IN ({','.join(str(int(t)) for t in type_ids)})"]
    args: list[Any] = [after]
    if lead_ids:
        where.append(f"leadId IN ({','.join(str(int(i)) for i in lead_ids)})")
    if fields is not None:
        marks = ",".join("?" * len(fields)) or "NULL"
        where.append(f"(activityTypeId != {CHANGE_DATA_VALUE} OR fieldName IN ({marks}))")
        args.extend(fields)
    # DB-API parameters directly: cheaper than text() compiling a new statement on every page.
    sql = (
        f"SELECT {','.join(_COLUMNS)} FROM activities WHERE {' AND '.join(where)} "
        f"ORDER BY id LIMIT {int(batch) + 1}"
    )
    rows = conn.exec_driver_sql(sql, tuple(args)).fetchall()
    more = len(rows) > batch
    rows = rows[:batch]
    if rows:
        last = int(rows[-1][0])
    else:
        # Nothing new: the resume point moves to the newest activity, so the next call does
        # not rescan activities of other types that were already passed over.
        newest = conn.execute(text("SELECT MAX(id) FROM activities")).scalar()
        last = max(after, int(newest or 0))
    return [_record(r, fields is not None) for r in rows], encode_token(TOKEN_KIND, last), more


_COLUMNS = ("id", "leadId", "activityDate", "activityTypeId", "primaryAttributeValueId",
            "primaryAttributeValue", "payload")  # fmt: skip


def _record(row: Sequence[Any], with_fields: bool) -> dict[str, Any]:
    ident, lead_id, date, type_id, value_id, value, raw = row
    payload = json.loads(raw)
    out: dict[str, Any] = {
        "id": ident,
        "marketoGUID": str(ident),
        "leadId": lead_id,
        "activityDate": date,
        "activityTypeId": type_id,
        "primaryAttributeValueId": value_id,
        "primaryAttributeValue": value,
        "attributes": payload.get("attributes", []),
    }
    if payload.get("campaignId") is not None:  # present when a smart campaign caused it
        out["campaignId"] = payload["campaignId"]
    if with_fields:
        out["fields"] = payload.get("fields", [])
    return out


def parse_type_ids(values: Sequence[Any]) -> list[int]:
    """Validate ``activityTypeIds`` (1 to 10 integers)."""
    if not values:
        raise MarketoError("1003", "activityTypeIds is required")
    if len(values) > 10:
        raise MarketoError("1003", "At most 10 activityTypeIds are allowed")
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise MarketoError("1003", f"Invalid activityTypeIds {list(values)!r}") from None
