"""Turning JSON bodies into stored values and stored rows into JSON, for one Dataverse table.

Dataverse rejects a body with an unknown property or a value of the wrong type with a 400 that
names the table and the property; the messages here say which record and field as well.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from emulators.dynamics.errors import BAD_PAYLOAD, BAD_PROPERTY, VALIDATION, ODataError
from emulators.dynamics.odata import GUID_RE, normalize_datetime
from emulators.dynamics.schema import (
    BIGINT,
    BOOLEAN,
    CHOICE_TYPES,
    DATETIME,
    DECIMAL,
    DOUBLE,
    INTEGER,
    MEMO,
    MONEY,
    STRING,
    UNIQUEID,
    Attribute,
    Table,
)
from emulators.dynamics.store import quote

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MAX_LENGTH = {STRING: 4000, MEMO: 1_048_576}


_NOW: list[Any] = [0, ""]


def utc_now() -> str:
    """The current UTC time as stored (second precision; formatted once per second)."""
    second = int(time.time())
    if _NOW[0] != second:
        _NOW[0], _NOW[1] = second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
    return str(_NOW[1])


def convert_value(table: Table, attr: Attribute, value: Any, record: str) -> Any:
    """Check one body value against its column type and return what is stored.

    Raises:
        ODataError: 400 naming the table, the record and the column.
    """
    if value is None:
        return None
    where = f"{table.logical_name} record {record}, column '{attr.name}'"
    kind = attr.type
    if kind in (STRING, MEMO):
        if not isinstance(value, str):
            raise ODataError(400, BAD_PAYLOAD, f"{where}: expected a string, got {type(value).__name__}")
        limit = attr.max_length or MAX_LENGTH[kind]
        if len(value) > limit:
            raise ODataError(
                400,
                VALIDATION,
                f"A validation error occurred. The length of the '{attr.name}'"
                f" attribute of the '{table.logical_name}' entity exceeded the maximum allowed"
                f" length of '{limit}' ({where}).",
            )
        return value
    if kind == BOOLEAN:
        if not isinstance(value, bool):
            raise ODataError(400, BAD_PAYLOAD, f"{where}: expected true or false, got {value!r}")
        return int(value)
    if kind in (INTEGER, BIGINT) or kind in CHOICE_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ODataError(400, BAD_PAYLOAD, f"{where}: expected an integer, got {value!r}")
        if attr.options and value not in {v for v, _ in attr.options}:
            raise ODataError(
                400,
                VALIDATION,
                f"A validation error occurred. The value {value} of"
                f" '{attr.name}' on record of type '{table.logical_name}' is outside the valid"
                f" range ({where}).",
            )
        return value
    if kind in (MONEY, DECIMAL, DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ODataError(400, BAD_PAYLOAD, f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind == DATETIME:
        if not isinstance(value, str):
            raise ODataError(400, BAD_PAYLOAD, f"{where}: expected an ISO date-time string, got {value!r}")
        try:
            norm = normalize_datetime(value)
        except ValueError:
            raise ODataError(400, BAD_PAYLOAD, f"{where}: cannot parse date-time {value!r}") from None
        return norm[:10] if attr.date_only else norm
    if kind == UNIQUEID:
        if not isinstance(value, str) or not GUID_RE.match(value):
            raise ODataError(400, BAD_PAYLOAD, f"{where}: expected a GUID, got {value!r}")
        return GUID_RE.match(value).group(1).lower()  # type: ignore[union-attr]
    raise ODataError(400, BAD_PAYLOAD, f"{where}: column type {kind} cannot be written")


def unknown_property(table: Table, name: str) -> ODataError:
    """The 400 Dataverse gives for a body property the table does not have."""
    return ODataError(
        400,
        BAD_PAYLOAD,
        f"Error identified in Payload provided by the user for Entity"
        f" :'{table.entity_set}', For more information on this error please follow this help"
        f" link https://go.microsoft.com/fwlink/?linkid=2195293 ---->  InnerException :"
        f" Microsoft.OData.ODataException: The property '{name}' does not exist on type"
        f" 'Microsoft.Dynamics.CRM.{table.logical_name}'. Make sure to only use property names"
        " that are defined by the type or mark the type as open type.",
    )


def unknown_query_property(table: Table, name: str) -> ODataError:
    return ODataError(
        400,
        BAD_PROPERTY,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{table.logical_name}'.",
    )


def full_name(first: Any, last: Any) -> str | None:
    parts = [p for p in (first, last) if p]
    return " ".join(parts) if parts else None


class RowWriter:
    """Turns rows of a ``SELECT`` into JSON records for one table and one column list.

    Columns in ``masked`` (secured columns the caller may not read) come out as null, without
    annotations: Dataverse returns no data for them, indistinguishable from an empty value.
    """

    def __init__(
        self,
        table: Table,
        attrs: Sequence[Attribute],
        annotations: set[str],
        sql_json: bool = False,
        masked: frozenset[str] = frozenset(),
    ) -> None:
        self.table = table
        self.attrs = list(attrs)
        self.names = [a.wire_name for a in self.attrs]
        self.columns = [a.name for a in self.attrs]
        self.masked_idx = [i for i, a in enumerate(self.attrs) if a.name in masked]
        self.bool_idx = [i for i, a in enumerate(self.attrs) if a.type == BOOLEAN and a.name not in masked]
        self.extra: list[Callable[[dict[str, Any], Sequence[Any]], None]] = []
        want_all = "*" in annotations
        if want_all or "Microsoft.Dynamics.CRM.lookuplogicalname" in annotations:
            for i, a in enumerate(self.attrs):
                if a.is_lookup and a.name not in masked:
                    if a.polymorphic:
                        self.columns.append(f"{a.name}type")
                        self.extra.append(_lookup_type(a.wire_name, len(self.columns) - 1))
                    else:
                        self.extra.append(_lookup_static(a.wire_name, a.targets[0], i))
        if want_all or "OData.Community.Display.V1.FormattedValue" in annotations:
            for i, a in enumerate(self.attrs):
                if a.name in masked:
                    continue
                if a.options:
                    self.extra.append(_formatted(a.wire_name, dict(a.options), i))
                elif a.type == BOOLEAN:
                    self.extra.append(_formatted(a.wire_name, {1: "Yes", 0: "No"}, i))
        self.version_idx = self.columns.index("versionnumber") if "versionnumber" in self.columns else None
        if self.version_idx is None:
            self.columns.append("versionnumber")
            self.version_idx = len(self.columns) - 1
        self.json_sql = _json_object_sql(self.attrs, masked) if sql_json and not self.extra else None

    def record(self, row: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": f'W/"{row[self.version_idx]}"'}  # type: ignore[index]
        out.update(zip(self.names, row, strict=False))
        for i in self.masked_idx:
            out[self.names[i]] = None
        for i in self.bool_idx:
            value = row[i]
            if value is not None:
                out[self.names[i]] = bool(value)
        for fn in self.extra:
            fn(out, row)
        return out


def _json_object_sql(attrs: Sequence[Attribute], masked: frozenset[str] = frozenset()) -> str:
    """Return an SQL expression that builds a record's JSON text inside SQLite.

    Page reads use it when no annotations are asked for: SQLite's JSON functions in C are several
    times faster than building a dict per row in Python. ``json_object`` takes at most 127
    arguments in older SQLite builds, so wide tables are built in chunks and spliced as text.
    """
    pairs = ["'@odata.etag', 'W/\"' || \"versionnumber\" || '\"'"]
    for attr in attrs:
        col = quote(attr.name)
        if attr.name in masked:
            value = "NULL"
        elif attr.type == BOOLEAN:
            value = f"json(CASE WHEN {col} IS NULL THEN 'null' WHEN {col} THEN 'true' ELSE 'false' END)"
        else:
            value = col
        pairs.append(f"'{attr.wire_name}', {value}")
    chunks = [f"json_object({', '.join(pairs[i : i + 50])})" for i in range(0, len(pairs), 50)]
    expr = chunks[0]
    for chunk in chunks[1:]:
        expr = f"substr({expr}, 1, length({expr}) - 1) || ',' || substr({chunk}, 2)"
    return expr


def _lookup_type(name: str, idx: int) -> Callable[[dict[str, Any], Sequence[Any]], None]:
    def add(out: dict[str, Any], row: Sequence[Any]) -> None:
        if row[idx]:
            out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = row[idx]

    return add


def _lookup_static(name: str, target: str, idx: int) -> Callable[[dict[str, Any], Sequence[Any]], None]:
    def add(out: dict[str, Any], row: Sequence[Any]) -> None:
        if row[idx]:
            out[f"{name}@Microsoft.Dynamics.CRM.lookuplogicalname"] = target

    return add


def _formatted(
    name: str, labels: dict[int, str], idx: int
) -> Callable[[dict[str, Any], Sequence[Any]], None]:
    def add(out: dict[str, Any], row: Sequence[Any]) -> None:
        if row[idx] is not None:
            out[f"{name}@OData.Community.Display.V1.FormattedValue"] = labels.get(row[idx], str(row[idx]))

    return add
