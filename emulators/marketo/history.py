"""Admin set-up of programs, memberships and past activities (``POST /_emulator/...``).

Marketo's API cannot write standard activities or date anything in the past; tests need months
of history (emails delivered, opened and clicked, forms filled, pages visited, interesting moments,
program status changes) to exercise incremental and bulk reads. These actions lay it down:

* ``programs``: ``{"programs": [{"name", "type", "channel", "description"?, "createdAt"?}]}``.
* ``program-members``: ``{"programId", "statusName", "leadIds": [...], "at"?, "acquiredBy"?}``:
  the same status rules and 104 activities as the API, dated ``at``.
* ``activities``: ``{"activities": [{"leadId", "activityTypeId", "activityDate",
  "primaryAttributeValueId"?, "primaryAttributeValue"?, "campaignId"?, "attributes"?}]}`` where
  ``attributes`` is ``{name: value}`` or ``[{name, value}]``.

Activities get ids in date order within a call. Feed paging tokens are activity ids, so history
laid down after later activities reads, in the REST feeds, after them (the bulk export orders
by date); lay history down first when that matters.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException

from emulators.marketo import members, programs
from emulators.marketo.activities import append
from emulators.marketo.activity_types import TYPE_IDS
from emulators.marketo.envelope import MarketoError
from emulators.marketo.fields import format_datetime, parse_datetime

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from emulators.marketo.store import Store

MAX_ACTIVITIES = 50_000  # per admin call


def _admin(fn: Any, *args: Any) -> Any:
    """Run ``fn``; a Marketo error becomes an HTTP 400 of the admin area."""
    try:
        return fn(*args)
    except MarketoError as exc:
        raise HTTPException(400, f"{exc.code}: {exc.message}") from None


def add_programs(conn: Connection, store: Store, body: Any) -> dict[str, Any]:
    specs = body.get("programs") if isinstance(body, dict) and "programs" in body else [body]
    if not isinstance(specs, list):
        raise HTTPException(400, 'body must be {"programs": [...]} or one program')
    return {"result": _admin(programs.create_many, conn, store, specs)}


def add_members(conn: Connection, store: Store, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("leadIds"), list):
        raise HTTPException(400, 'body must be {"programId", "statusName", "leadIds": [...], "at"?}')
    program = _admin(programs.require, conn, body.get("programId"))
    when = _date(body["at"], "at") if body.get("at") else None
    result = _admin(
        lambda: members.set_status(
            conn,
            store,
            program,
            [{"leadId": i} for i in body["leadIds"]],
            str(body.get("statusName") or ""),
            when=when,
            acquired=bool(body.get("acquiredBy")),
            reason=str(body.get("reason") or members.API_REASON),
        )
    )
    return {"result": result}


def _date(value: Any, name: str) -> str:
    try:
        return format_datetime(parse_datetime(str(value)))
    except ValueError:
        raise HTTPException(400, f"{name}: invalid date {value!r}") from None


def _attributes(raw: Any, index: int) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [{"name": str(k), "value": v} for k, v in raw.items() if v is not None]
    if isinstance(raw, list) and all(isinstance(a, dict) and "name" in a for a in raw):
        return [{"name": str(a["name"]), "value": a.get("value")} for a in raw if a.get("value") is not None]
    raise HTTPException(400, f"activities[{index}].attributes must be an object or a list of {{name, value}}")


def add_activities(conn: Connection, store: Store, body: Any) -> dict[str, Any]:
    """Append activities at the dates given; return how many and their id range."""
    items = body.get("activities") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise HTTPException(400, 'body must be {"activities": [...]}')
    if len(items) > MAX_ACTIVITIES:
        raise HTTPException(400, f"at most {MAX_ACTIVITIES} activities per call")
    rows: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise HTTPException(400, f"activities[{index}] must be an object")
        try:
            lead_id, type_id = int(item["leadId"]), int(item["activityTypeId"])
        except (KeyError, TypeError, ValueError):
            raise HTTPException(400, f"activities[{index}] needs integer leadId and activityTypeId") from None
        if type_id not in TYPE_IDS:
            raise HTTPException(
                400, f"activities[{index}]: activity type {type_id} is not listed in types.json"
            )
        payload: dict[str, Any] = {"attributes": _attributes(item.get("attributes"), index), "fields": []}
        for extra in ("campaignId", "actionResult"):
            if item.get(extra) is not None:
                payload[extra] = item[extra]
        value_id = item.get("primaryAttributeValueId")
        rows.append(
            {
                "leadId": lead_id,
                "activityDate": _date(item.get("activityDate"), f"activities[{index}].activityDate"),
                "activityTypeId": type_id,
                "primaryAttributeValueId": None if value_id is None else int(value_id),
                "primaryAttributeValue": item.get("primaryAttributeValue"),
                "fieldName": None,
                "payload": json.dumps(payload),
            }
        )
    rows.sort(key=lambda r: r["activityDate"])  # stable: same-second activities keep their order
    first = store.take_activity_ids(len(rows))
    append(conn, first, rows)
    return {"added": len(rows), "firstId": first, "lastId": first + len(rows) - 1}
