"""Lead field schema operations: bare mode, Create Lead Fields, Get Lead Fields (by name or paged).

Create Lead Fields (``POST /rest/v1/leads/schema/fields.json``, Adobe's "Leads" page, section
"Create Fields") takes ``{"input": [...]}`` of at most 100 fields, each with the required
``displayName``, ``name`` and ``dataType`` and the optional ``description``, ``isHidden``,
``isHtmlEncodingInEmail`` and ``isSensitive``. ``name`` must start with a letter and hold only
letters, digits and underscores. The answer has one ``{"name", "status"}`` entry per input field,
``created`` or ``skipped`` with ``reasons``; a field that cannot be made never fails the call.

The skip codes are not documented for this endpoint, so they are the closest documented
record-level codes (**unconfirmed**): 1002 for a missing required attribute, 1003 for an
invalid name, data type or flag, 1017 "Object already exists" for a name or display name in
use. Over 100 fields answers the response-level 1003 this emulator uses for every batch limit.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from emulators.marketo import store as tables
from emulators.marketo.envelope import MarketoError, skipped
from emulators.marketo.fields import LEAD_FIELD_IDS, LEAD_FIELD_MAP, FieldDef, format_datetime
from emulators.marketo.lead_schema import (
    CREATABLE_TYPES,
    NAME_PATTERN,
    SYNC_PREFIX,
    FieldState,
    LeadSchema,
    default_length,
    schema_field,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Connection

    from emulators.marketo.store import Store

MAX_CREATE = 100  # fields per Create Lead Fields call (Adobe: "a maximum of 100")
MAX_PAGE = 300  # Get Lead Fields returns at most 300 per page by default
_REQUIRED = ("displayName", "name", "dataType")
_FLAGS = {"isHidden": False, "isHtmlEncodingInEmail": True, "isSensitive": False}


def _now() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


# ---- bare mode -------------------------------------------------------------------------------------


def apply_bare(conn: Connection, store: Store, force: bool = False) -> dict[str, Any]:
    """Hide every ``msd…`` lead field and empty its values, once per database.

    Bare mode is remembered in ``emulator_state``: a restart with ``--bare`` after fields were
    created keeps them. ``force`` hides them again, created ones included (a test reset).
    Caller holds the store lock.

    Returns:
        ``{"bare": True, "applied": <changed now>, "absent": [names hidden now]}``.
    """
    schema = store.lead_schema
    if schema.bare and not force:
        return {"bare": True, "applied": False, "absent": sorted(schema.absent)}
    names = [f.name for f in schema.fields if f.name.startswith(SYNC_PREFIX)]
    for name in names:
        _hide(conn, name)
    if names:
        sets = ", ".join(f'"{n}" = NULL' for n in names)
        conn.exec_driver_sql(f"UPDATE leads SET {sets}")
    tables.set_state(conn, tables.BARE_APPLIED, _now())
    schema = store.reload_lead_schema(conn)
    return {"bare": True, "applied": True, "absent": sorted(schema.absent)}


def _hide(conn: Connection, name: str) -> None:
    """Mark ``name`` absent; a custom field keeps its row (its column stays, emptied)."""
    if name in LEAD_FIELD_MAP:
        _delete_row(conn, name)
        conn.execute(tables.lead_fields.insert().values(name=name, present=0, updatedAt=_now()))
    else:
        conn.execute(
            tables.lead_fields.update()
            .where(tables.lead_fields.c.name == name)
            .values(present=0, updatedAt=_now())
        )


def _delete_row(conn: Connection, name: str) -> None:
    conn.execute(tables.lead_fields.delete().where(tables.lead_fields.c.name == name))


# ---- Create Lead Fields ------------------------------------------------------------------------------


class _Skip(Exception):
    """One input field that is not created; ``code`` and ``message`` go to its ``reasons``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _flag(item: dict[str, Any], key: str) -> bool:
    value = item.get(key, _FLAGS[key])
    if value is None:
        return _FLAGS[key]
    if not isinstance(value, bool):
        raise _Skip("1003", f"Invalid data: '{key}' must be true or false")
    return value


def _required(item: Any) -> tuple[str, str, str]:
    """Return ``(name, displayName, dataType)`` of an input field.

    Raises:
        _Skip: Not an object (1003), or a required attribute missing (1002).
    """
    if not isinstance(item, dict):
        raise _Skip("1003", "Invalid data: each input field must be a JSON object")
    for key in _REQUIRED:
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise _Skip("1002", f"Missing value for the required parameter '{key}'")
    return item["name"].strip(), item["displayName"].strip(), item["dataType"].strip()


def _check_free(name: str, display: str, schema: LeadSchema) -> None:
    """Check the name and display name are valid and not in use (SQLite columns ignore case).

    Raises:
        _Skip: 1003 for an invalid name, 1017 for a name or display name in use.
    """
    if not NAME_PATTERN.fullmatch(name):
        rule = "must start with a letter and hold only letters, digits or underscores"
        raise _Skip("1003", f"Invalid data: name '{name}' {rule}")
    if schema.get(name) is not None:
        raise _Skip("1017", f"Object already exists: field '{name}'")
    column = schema.column_named(name)
    if column is not None and column != name:
        raise _Skip("1017", f"Object already exists: field '{column}' differs from '{name}' only in case")
    clash = next((f for f in schema.fields if f.display.lower() == display.lower()), None)
    if clash is not None:
        raise _Skip("1017", f"Object already exists: display name '{display}' belongs to '{clash.name}'")


def _validate(item: Any, schema: LeadSchema) -> FieldState:
    """Check one input field against the rules and the fields in use; return what to store.

    Raises:
        _Skip: The field is not created (code and message say why).
    """
    name, display, data_type = _required(item)
    if data_type not in CREATABLE_TYPES:
        raise _Skip("1003", f"Invalid data: dataType '{data_type}' is not supported")
    _check_free(name, display, schema)
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        raise _Skip("1003", "Invalid data: 'description' must be a string")
    return FieldState(
        name=name,
        present=True,
        data_type=data_type,
        display=display,
        length=default_length(data_type),
        description=description,
        hidden=_flag(item, "isHidden"),
        html_encoding=_flag(item, "isHtmlEncodingInEmail"),
        sensitive=_flag(item, "isSensitive"),
        field_id=LEAD_FIELD_IDS.get(name, schema.next_id),  # a catalogue field keeps its id
    )


def _store_field(conn: Connection, state: FieldState, schema: LeadSchema) -> None:
    """Write the row of a created field, adding its lead column when it has none yet."""
    if schema.column_named(state.name) is None:
        tables.add_lead_column(conn, _definition(state))
    _delete_row(conn, state.name)
    conn.execute(
        tables.lead_fields.insert().values(
            name=state.name,
            present=1,
            dataType=state.data_type,
            displayName=state.display,
            length=state.length,
            description=state.description,
            isHidden=int(state.hidden),
            isHtmlEncodingInEmail=int(state.html_encoding),
            isSensitive=int(state.sensitive),
            fieldId=state.field_id,
            updatedAt=_now(),
        )
    )


def _definition(state: FieldState) -> FieldDef:
    return FieldDef(state.name, state.display or state.name, state.data_type or "string", state.length)


def _named(item: Any) -> dict[str, Any]:
    """``{"name": ...}`` for a result entry, when the input field had a usable name."""
    name = item.get("name") if isinstance(item, dict) else None
    return {"name": name} if isinstance(name, str) else {}


def create(conn: Connection, store: Store, inputs: Sequence[Any]) -> tuple[list[dict[str, Any]], int]:
    """Create lead fields in input order; caller holds the store lock.

    Each field is checked against the fields in use *after* the ones before it, so a name given
    twice is created once and skipped once.

    Returns:
        The per-field result entries and how many fields were created.

    Raises:
        MarketoError: 701 for no input, 1003 for more than 100 fields.
    """
    if not inputs:
        raise MarketoError("701", "input cannot be blank")
    if len(inputs) > MAX_CREATE:
        raise MarketoError("1003", f"Too many fields in input: {len(inputs)} (max {MAX_CREATE})")
    before = store.lead_schema
    try:
        results = [_create_one(conn, store, item) for item in inputs]
    except Exception:
        store.lead_schema = before  # the transaction rolls back: so does the snapshot
        raise
    return results, sum(1 for r in results if r["status"] == "created")


def _create_one(conn: Connection, store: Store, item: Any) -> dict[str, Any]:
    """Create one field (or say why not) and refresh the store's schema; returns its result entry."""
    schema = store.lead_schema
    try:
        state = _validate(item, schema)
    except _Skip as exc:
        return skipped(exc.code, exc.message, **_named(item))
    _store_field(conn, state, schema)
    store.reload_lead_schema(conn)
    return {"name": state.name, "status": "created"}


# ---- Get Lead Fields ----------------------------------------------------------------------------------


def list_fields(schema: LeadSchema, batch: int, offset: int) -> tuple[list[dict[str, Any]], bool]:
    """One page of Get Lead Fields, and whether more follow."""
    page = schema.fields[offset : offset + batch]
    return [schema_field(schema, f) for f in page], offset + len(page) < len(schema.fields)


def get_field(schema: LeadSchema, name: str) -> dict[str, Any]:
    """Get Lead Field by Name.

    Raises:
        MarketoError: 1006 for a field that does not exist, or bare mode hides (the code of this
            endpoint's "not found" is unconfirmed; 1006 is Marketo's "Field not found").
    """
    f = schema.get(name)
    if f is None:
        raise MarketoError("1006", f"Field '{name}' not found")
    return schema_field(schema, f)
