"""Bulk activity extract: the ``activities`` :class:`~emulators.marketo.bulk.ExportKind`.

Filter (Adobe's Bulk Activity Extract page): ``createdAt`` {startAt, endAt} is required and spans
at most 31 days; ``activityTypeIds`` is optional; ``primaryAttributeValueIds`` or
``primaryAttributeValues`` (not both, at most 50, only with ``activityTypeIds``) narrow further.
"Delete Lead" is not exported: asking for it is refused (1003; the code is unconfirmed) and it is
left out otherwise. ``fields`` is optional; the default columns are marketoGUID, leadId,
activityDate, activityTypeId, campaignId, primaryAttributeValueId, primaryAttributeValue,
attributes, and ``actionResult`` may be asked for. The ``attributes`` column is a JSON object of
attribute name to value, as in Adobe's sample file; empty values are the literal ``null``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from emulators.marketo.activity_types import CHANGE_DATA_VALUE, DELETE_LEAD, TYPE_IDS
from emulators.marketo.bulk import ExportKind, date_window, header_row
from emulators.marketo.envelope import MarketoError

if TYPE_CHECKING:
    from emulators.marketo.limits import LimitsConfig
    from emulators.marketo.store import Store

DEFAULT_COLUMNS = (
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
)
COLUMNS = (*DEFAULT_COLUMNS, "actionResult")
_FILTERS = {"createdAt", "activityTypeIds", "primaryAttributeValueIds", "primaryAttributeValues"}
MAX_PRIMARY_VALUES = 50


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise MarketoError("1003", f"filter.{name} must be a non-empty array")
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise MarketoError("1003", f"filter.{name} must hold integers") from None


def prepare(conn: Connection, store: Store, cfg: LimitsConfig, body: dict[str, Any]) -> dict[str, Any]:
    """Check an activity export request.

    Raises:
        MarketoError: 1003 without ``createdAt`` or for a bad filter, 1035 for a filter this
            emulator does not know, 1006 for an unknown column.
    """
    fields = body.get("fields") or list(DEFAULT_COLUMNS)
    if not isinstance(fields, list):
        raise MarketoError("1003", "fields must be an array")
    for name in fields:
        if name not in COLUMNS:
            raise MarketoError("1006", f"Field '{name}' not found")
    flt = body.get("filter")
    if not isinstance(flt, dict) or "createdAt" not in flt:
        raise MarketoError("1003", "filter.createdAt is required")
    unknown = set(flt) - _FILTERS
    if unknown:
        raise MarketoError("1035", f"Unsupported filter type for target subscription: {sorted(unknown)[0]}")
    start, end = date_window(flt["createdAt"], "createdAt", cfg)
    types = _int_list(flt["activityTypeIds"], "activityTypeIds") if "activityTypeIds" in flt else []
    if DELETE_LEAD in types:
        raise MarketoError("1003", "The Delete Lead activity is not supported; use Get Deleted Leads")
    bad = [t for t in types if t not in TYPE_IDS]
    if bad:
        raise MarketoError("1003", f"Invalid activityTypeIds: {bad}")
    ids = flt.get("primaryAttributeValueIds")
    values = flt.get("primaryAttributeValues")
    if ids is not None and values is not None:
        raise MarketoError(
            "1003", "primaryAttributeValueIds and primaryAttributeValues cannot be used together"
        )
    if (ids is not None or values is not None) and not types:
        raise MarketoError("1003", "primary attribute filters need activityTypeIds")
    primary: dict[str, list[Any]] = {}
    if ids is not None:
        primary["ids"] = _int_list(ids, "primaryAttributeValueIds")
    if values is not None:
        if not isinstance(values, list) or not values:
            raise MarketoError("1003", "filter.primaryAttributeValues must be a non-empty array")
        primary["values"] = [str(v) for v in values]
    if any(len(v) > MAX_PRIMARY_VALUES for v in primary.values()):
        raise MarketoError("1003", f"At most {MAX_PRIMARY_VALUES} primary attribute values are allowed")
    return {"fields": fields, "startAt": start, "endAt": end, "types": types, "primary": primary}


def attributes_object(type_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    """An activity's attributes as the bulk file's JSON object (name → value).

    A Change Data Value's changed field is kept in the feed's ``fields`` list; the file shows it
    as its "New Value"/"Old Value" attributes (how Marketo flattens it is unconfirmed).
    """
    out = {a["name"]: a["value"] for a in payload.get("attributes", []) if a.get("value") is not None}
    if type_id == CHANGE_DATA_VALUE:
        for change in payload.get("fields", [])[:1]:
            out.setdefault("New Value", change.get("newValue"))
            out.setdefault("Old Value", change.get("oldValue"))
    return out


def _cell(value: Any) -> str:
    return "null" if value is None or value == "" else str(value)


def write(conn: Connection, store: Store, request: dict[str, Any], writer: Any) -> int:
    """Write the header and the activities created in the window, oldest first."""
    fields = request["fields"]
    writer.writerow(header_row(fields, request["headers"], {}))
    where = ["activityDate >= :a", "activityDate <= :b", f"activityTypeId != {DELETE_LEAD}"]
    args: dict[str, Any] = {"a": request["startAt"], "b": request["endAt"]}
    if request["types"]:
        where.append(f"activityTypeId IN ({','.join(str(int(t)) for t in request['types'])})")
    primary = request["primary"]
    if "ids" in primary:
        where.append(f"primaryAttributeValueId IN ({','.join(str(int(i)) for i in primary['ids'])})")
    if "values" in primary:
        names = [f"v{i}" for i in range(len(primary["values"]))]
        where.append(f"primaryAttributeValue IN ({','.join(':' + n for n in names)})")
        args.update(dict(zip(names, primary["values"], strict=True)))
    result = conn.execute(
        text(
            "SELECT id, leadId, activityDate, activityTypeId, primaryAttributeValueId, "
            f"primaryAttributeValue, payload FROM activities WHERE {' AND '.join(where)} "
            "ORDER BY activityDate, id"
        ),
        args,
    )
    count = 0
    while batch := result.fetchmany(5000):
        for ident, lead_id, date, type_id, value_id, value, raw in batch:
            payload = json.loads(raw)
            row = {
                "marketoGUID": str(ident),
                "leadId": lead_id,
                "activityDate": date,
                "activityTypeId": type_id,
                "campaignId": payload.get("campaignId"),
                "primaryAttributeValueId": value_id,
                "primaryAttributeValue": value,
                "attributes": json.dumps(attributes_object(type_id, payload), separators=(",", ":")),
                "actionResult": payload.get("actionResult"),
            }
            writer.writerow([_cell(row[f]) for f in fields])
        count += len(batch)
    return count


ACTIVITY_EXPORT = ExportKind("activities", prepare, write, "activity.exported")
