"""Bulk program member extract: the ``program/members`` :class:`~emulators.marketo.bulk.ExportKind`.

Filter (Adobe's Bulk Program Member Extract page): exactly one of ``programId`` or
``programIds`` (up to 10; the file then starts with a ``programId`` column); optional
``statusNames`` (ORed; a name no listed program's channel has answers 1003 "Invalid Data"),
``updatedAt`` {startAt, endAt} (at most 31 days) and ``isExhausted`` (members here are never
exhausted). The members are read when the job processes. ``fields`` is required: program member
fields (Describe Program Member) and person fields (Describe Lead2) by REST name. Unless
``columnHeaderNames`` renames them, program member columns carry the headers of Adobe's sample
file ("Member Date", "Program", "Status", "Lead Id", "Success"; the other member fields keep
their API names, unconfirmed) and person columns their API names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from emulators.marketo import programs as program_ops
from emulators.marketo.bulk import ExportKind, date_window, header_row
from emulators.marketo.envelope import MarketoError
from emulators.marketo.fields import to_csv
from emulators.marketo.member_reads import MEMBER_FIELDS, member_value

if TYPE_CHECKING:
    from emulators.marketo.limits import LimitsConfig
    from emulators.marketo.store import Store

MAX_PROGRAMS = 10
_FILTERS = {"programId", "programIds", "statusNames", "updatedAt", "isExhausted"}
HEADERS = {f.name: f.display for f in MEMBER_FIELDS.values()}


def _program_ids(conn: Connection, flt: dict[str, Any]) -> tuple[list[int], bool]:
    if ("programId" in flt) == ("programIds" in flt):
        raise MarketoError("1003", "filter needs exactly one of programId and programIds")
    if "programId" in flt:
        return [int(program_ops.require(conn, flt["programId"])["id"])], False
    raw = flt["programIds"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PROGRAMS:
        raise MarketoError("1003", f"filter.programIds must list 1 to {MAX_PROGRAMS} program ids")
    return [int(program_ops.require(conn, p)["id"]) for p in raw], True


def prepare(conn: Connection, store: Store, cfg: LimitsConfig, body: dict[str, Any]) -> dict[str, Any]:
    """Check a program member export request.

    Raises:
        MarketoError: 701 without fields, 1006 for an unknown field, 1013 for an unknown
            program, 1003 for a bad filter or status name, 1035 for a filter not emulated.
    """
    fields = body.get("fields")
    if not fields or not isinstance(fields, list):
        raise MarketoError("701", "fields cannot be blank")
    for name in fields:
        if not isinstance(name, str) or (name not in MEMBER_FIELDS and store.lead_schema.get(name) is None):
            raise MarketoError("1006", f"Field '{name}' not found")
    flt = body.get("filter")
    if not isinstance(flt, dict):
        raise MarketoError("1003", "filter must be an object")
    unknown = set(flt) - _FILTERS
    if unknown:
        raise MarketoError("1035", f"Unsupported filter type for target subscription: {sorted(unknown)[0]}")
    ids, several = _program_ids(conn, flt)
    request: dict[str, Any] = {"fields": fields, "programIds": ids, "several": several}
    if "statusNames" in flt:
        names = flt["statusNames"]
        if not isinstance(names, list) or not names:
            raise MarketoError("1003", "filter.statusNames must be a non-empty array")
        channels = [program_ops.channel_of(program_ops.find(conn, i)) for i in ids]
        for name in names:
            if not any(c.status(str(name)) for c in channels):
                raise MarketoError("1003", f"Invalid Data: status '{name}' is in none of the programs")
        request["statusNames"] = [str(n) for n in names]
    if "updatedAt" in flt:
        request["updatedAt"] = date_window(flt["updatedAt"], "updatedAt", cfg)
    if flt.get("isExhausted") is True:
        request["none"] = True  # nobody is exhausted: an engagement stream is not emulated
    return request


def write(conn: Connection, store: Store, request: dict[str, Any], writer: Any) -> int:
    """Write the header and the current members of the programs, by program then lead id."""
    names = list(request["fields"])
    if request["several"] and (not names or names[0] != "programId"):
        names.insert(0, "programId")
    lead_fields = {n: store.lead_schema.get(n) for n in names if n not in MEMBER_FIELDS}
    writer.writerow(header_row(names, request["headers"], HEADERS))
    where = [f"m.programId IN ({','.join(str(int(i)) for i in request['programIds'])})"]
    args: dict[str, Any] = {}
    if request.get("none"):
        where.append("0")
    if "statusNames" in request:
        marks = [f"s{i}" for i in range(len(request["statusNames"]))]
        where.append(f"m.statusName COLLATE NOCASE IN ({','.join(':' + m for m in marks)})")
        args.update(dict(zip(marks, request["statusNames"], strict=True)))
    if "updatedAt" in request:
        where.append("m.updatedAt >= :ua AND m.updatedAt <= :ub")
        args.update({"ua": request["updatedAt"][0], "ub": request["updatedAt"][1]})
    lead_cols = "".join(f', l."{n}" AS "lead.{n}"' for n, f in lead_fields.items() if f is not None)
    result = conn.execute(
        text(
            f"SELECT m.*, p.name AS programName{lead_cols} FROM program_members m "
            "JOIN programs p ON p.id = m.programId LEFT JOIN leads l ON l.id = m.leadId "
            f"WHERE {' AND '.join(where)} ORDER BY m.programId, m.leadId"
        ),
        args,
    ).mappings()
    count = 0
    while batch := result.fetchmany(5000):
        for row in batch:
            writer.writerow([_cell(row, n, lead_fields) for n in names])
        count += len(batch)
    return count


def _cell(row: Any, name: str, lead_fields: dict[str, Any]) -> str:
    if name in MEMBER_FIELDS:
        value = member_value(row, name)
        if isinstance(value, bool):
            return "true" if value else "false"
        return "null" if value is None else str(value)
    field = lead_fields.get(name)
    return "null" if field is None else to_csv(field, row[f"lead.{name}"])


MEMBER_EXPORT = ExportKind("program/members", prepare, write, "programmember.exported")
