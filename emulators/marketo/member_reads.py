"""Program member reads: the member field catalogue, Describe Program Member, Get Program Members,
Get Programs by Lead Id.

Get Program Members needs a ``filterType`` (``leadId``, ``statusName``, ``reachedSuccess``, or
``updatedAt`` with ``startAt``/``endAt`` at most seven days apart) and answers records with ``seq``
and, by default, ``acquiredBy``, ``leadId``, ``membershipDate``, ``programId``, ``reachedSuccess``
(Adobe's Program Members page).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from emulators.marketo.envelope import MarketoError
from emulators.marketo.fields import FieldDef, format_datetime, parse_datetime, to_json

if TYPE_CHECKING:
    from collections.abc import Sequence


def _f(name: str, display: str, data_type: str, searchable: bool = False) -> FieldDef:
    return FieldDef(name, display, data_type, updateable=False, searchable=searchable)


# Standard program member fields (Describe Program Member); display names from Adobe's field list
# and its bulk file sample ("Member Date", "Program", "Status", "Lead Id", "Success").
MEMBER_FIELDS: dict[str, FieldDef] = {
    f.name: f
    for f in (
        _f("acquiredBy", "Acquired By", "boolean"),
        _f("attendanceLikelihood", "attendanceLikelihood", "integer"),
        _f("createdAt", "createdAt", "datetime"),
        _f("isExhausted", "Nurture Exhausted", "boolean"),
        _f("leadId", "Lead Id", "integer", searchable=True),
        _f("membershipDate", "Member Date", "datetime"),
        _f("nurtureCadence", "Nurture Cadence", "string"),
        _f("program", "Program", "string"),
        _f("programId", "programId", "integer"),
        _f("reachedSuccess", "Success", "boolean", searchable=True),
        _f("reachedSuccessDate", "reachedSuccessDate", "datetime"),
        _f("registrationLikelihood", "registrationLikelihood", "integer"),
        _f("statusName", "Status", "string", searchable=True),
        _f("statusReason", "statusReason", "string"),
        _f("trackName", "trackName", "string"),
        _f("updatedAt", "updatedAt", "datetime"),
        _f("waitlistPriority", "waitlistPriority", "integer"),
    )
}
DEFAULT_FIELDS = ("acquiredBy", "leadId", "membershipDate", "programId", "reachedSuccess")
_BOOLEAN = {"acquiredBy", "reachedSuccess", "isExhausted"}


def describe() -> dict[str, Any]:
    """The Describe Program Member result."""
    return {
        "name": "API Program Membership",
        "description": "Map for API program membership fields",
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": "2024-01-01T00:00:00Z",
        "dedupeFields": ["leadId", "programId"],
        "searchableFields": [[n] for n, f in MEMBER_FIELDS.items() if f.searchable],
        "fields": [
            {
                "name": f.name,
                "displayName": f.name,
                "dataType": f.data_type,
                "updateable": False,
                "crmManaged": False,
            }
            for f in MEMBER_FIELDS.values()
        ],
    }


def member_value(row: Any, name: str) -> Any:
    """A member field's value from a ``program_members`` row joined with its program's name."""
    if name == "program":
        return row["programName"]
    if name == "isExhausted":
        return False
    if name in _BOOLEAN:
        return bool(row[name])
    if name == "statusReason":
        return None
    return row.get(name)


def window(start: Any, end: Any, max_days: int) -> tuple[str, str]:
    """A ``startAt``/``endAt`` pair as stored text, at most ``max_days`` apart.

    Raises:
        MarketoError: 701 when either is missing, 704 for a bad date, 1003 for a reversed or too long range.
    """
    if not start or not end:
        raise MarketoError("701", "startAt and endAt cannot be blank")
    try:
        low, high = parse_datetime(str(start)), parse_datetime(str(end))
    except ValueError:
        raise MarketoError("704", "Invalid date format") from None
    if high < low:
        raise MarketoError("1003", "endAt is before startAt")
    if high - low > dt.timedelta(days=max_days):
        raise MarketoError("1003", f"Date range exceeds {max_days} days")
    return format_datetime(low), format_datetime(high)


def query(
    conn: Connection, program: Any, filter_type: str, values: Sequence[Any], span: tuple[str, str] | None,
    fields: Sequence[str], batch: int, offset: int,
) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
    """One page of Get Program Members (records carry ``seq``), and whether more follow."""
    where, args = ["m.programId = :p"], {"p": program["id"]}
    if filter_type == "updatedAt":
        assert span is not None
        where.append("m.updatedAt >= :a AND m.updatedAt <= :b")
        args.update({"a": span[0], "b": span[1]})
    else:
        keys = _filter_keys(filter_type, values)
        if not keys:
            return [], False
        names = [f"v{i}" for i in range(len(keys))]
        where.append(f"m.{filter_type} COLLATE NOCASE IN ({','.join(':' + n for n in names)})")
        args.update(dict(zip(names, keys, strict=True)))
    rows = conn.execute(
        text(
            "SELECT m.*, p.name AS programName FROM program_members m JOIN programs p ON p.id = m.programId "
            f"WHERE {' AND '.join(where)} ORDER BY m.leadId LIMIT :n OFFSET :o"
        ),
        {**args, "n": batch + 1, "o": offset},
    ).mappings()
    page = list(rows)
    out = []
    for seq, row in enumerate(page[:batch]):
        rec: dict[str, Any] = {"seq": seq}
        rec.update({n: v for n in fields if (v := member_value(row, n)) is not None})
        out.append(rec)
    return out, len(page) > batch


def _filter_keys(filter_type: str, values: Sequence[Any]) -> list[Any]:
    if filter_type == "leadId":
        return [int(v) for v in values if str(v).strip().lstrip("-").isdigit()]
    if filter_type == "reachedSuccess":
        flags = {"true": 1, "false": 0}
        return [flags[str(v).strip().lower()] for v in values if str(v).strip().lower() in flags]
    return [str(v) for v in values]


def memberships(
    conn: Connection, lead_ids: Sequence[int], program_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Get Programs by Lead Id: the lead's memberships, optionally only in ``program_ids``."""
    where = f"leadId IN ({','.join(str(int(i)) for i in lead_ids) or 'NULL'})"
    if program_ids:
        where += f" AND programId IN ({','.join(str(int(i)) for i in program_ids)})"
    rows = conn.execute(text(f"SELECT * FROM program_members WHERE {where} ORDER BY leadId, programId"))
    return [
        {
            "id": r.programId,
            "leadId": r.leadId,
            "progressionStatus": r.statusName,
            "isExhausted": False,
            "acquiredBy": bool(r.acquiredBy),
            "reachedSuccess": bool(r.reachedSuccess),
            "membershipDate": r.membershipDate,
            "updatedAt": r.updatedAt,
        }
        for r in rows
    ]


def leads_in_program(
    conn: Connection, program: Any, fields: Sequence[FieldDef], batch: int, offset: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of Get Leads by Program Id: lead fields plus the lead's ``membership`` record."""
    cols = ",".join(f'l."{f.name}"' for f in fields)
    rows = conn.execute(
        text(
            f"SELECT {cols}, m.statusName, m.acquiredBy, m.reachedSuccess, m.membershipDate, m.updatedAt "
            "FROM program_members m JOIN leads l ON l.id = m.leadId WHERE m.programId = :p "
            "ORDER BY m.leadId LIMIT :n OFFSET :o"
        ),
        {"p": program["id"], "n": batch + 1, "o": offset},
    ).all()
    out = []
    for row in rows[:batch]:
        record = {f.name: to_json(f, v) for f, v in zip(fields, row, strict=False) if v is not None}
        status, acquired, success, since, updated = row[len(fields) :]
        record["membership"] = {
            "id": program["id"],  # Adobe's sample has an id here; that it is the program's is unconfirmed
            "progressionStatus": status,
            "progressionStatusType": status,
            "isExhausted": False,
            "acquiredBy": bool(acquired),
            "reachedSuccess": bool(success),
            "membershipDate": since,
            "updatedAt": updated,
        }
        out.append(record)
    return out, len(rows) > batch
