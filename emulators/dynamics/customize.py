"""Customizing the emulated organization through the Web API, and the emulator's "bare" mode.

What a set-up tool does to a real organization, written to the live schema (persisted in the
database, so it survives a restart):

- ``POST EntityDefinitions(LogicalName='x')/Attributes`` with a typed attribute definition
  (Boolean, String, Memo, Integer, BigInt, DateTime, Decimal, Money, Double, Picklist) adds a
  column: logical name = ``SchemaName`` lower-cased; 204 with ``OData-EntityId``;
- ``POST EntityDefinitions(LogicalName='x')/Keys`` with ``SchemaName``, ``DisplayName`` and
  ``KeyAttributes`` adds an alternate key; 204 with ``OData-EntityId``;
- ``PUT EntityDefinitions(LogicalName='x')`` (or ``(<MetadataId>)``) with the table definition
  turns change tracking on; 204.

Bare mode (``python -m emulators dynamics --bare``, admin ``POST /_emulator/bare``) makes the
organization look like a real one the sync was never set up in: no ``new_synctomkto`` column on
any table, and change tracking off on the custom tables ``new_project`` and
``new_marketoactivity`` (a custom table starts with it off). It is recorded in the database, so
that ``--bare`` on a restart does not drop a column created through the API since.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from emulators.dynamics.errors import DUPLICATE_ATTRIBUTE, INVALID_ARGUMENT, ODataError
from emulators.dynamics.metadata import find_table, key_id
from emulators.dynamics.schema import (
    BIGINT,
    BOOLEAN,
    DATETIME,
    DECIMAL,
    DOUBLE,
    INTEGER,
    MEMO,
    MONEY,
    PICKLIST,
    STRING,
    Attribute,
    Table,
    attribute_metadata_id,
)
from emulators.dynamics.store import (
    change_column,
    quote,
    read_meta,
    schema_to_json,
    sql_type,
    storage_columns,
    write_meta,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.engine import Connection

    from emulators.dynamics.service import ApiRequest

SYNC_FILTER_COLUMN = "new_synctomkto"
BARE_UNTRACKED_TABLES = ("new_project", "new_marketoactivity")
BARE_META_KEY = "bare_applied"
# A publisher prefix is 2 to 8 letters or digits starting with a letter, then "_" and the name.
_SCHEMA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,7}_[A-Za-z0-9_]+$")
_CREATABLE = {
    "BooleanAttributeMetadata": BOOLEAN,
    "StringAttributeMetadata": STRING,
    "MemoAttributeMetadata": MEMO,
    "IntegerAttributeMetadata": INTEGER,
    "BigIntAttributeMetadata": BIGINT,
    "DateTimeAttributeMetadata": DATETIME,
    "DecimalAttributeMetadata": DECIMAL,
    "MoneyAttributeMetadata": MONEY,
    "DoubleAttributeMetadata": DOUBLE,
    "PicklistAttributeMetadata": PICKLIST,
}


def write(
    tables: dict[str, Table], conn: Connection, req: ApiRequest, key: str | None, rest: str | None
) -> str | None:
    """Run a write under ``EntityDefinitions``; return the ``OData-EntityId`` of what it created.

    Raises:
        ODataError: 405 for what the emulator does not customize, 400/404 for a bad request.
    """
    if key is None:
        raise ODataError(405, "", "Creating tables is not emulated (the emulator's tables are fixed)")
    table = find_table(tables, key)
    entity = f"{req.api_root}/EntityDefinitions(LogicalName='{table.logical_name}')"
    if req.method == "PUT" and rest is None:
        update_table(conn, tables, table, req.json())
        return None
    if req.method == "POST" and rest == "Attributes":
        attr = create_attribute(conn, tables, table, req.json())
        return f"{entity}/Attributes({attribute_metadata_id(table.logical_name, attr.name)})"
    if req.method == "POST" and rest == "Keys":
        columns = create_key(conn, tables, table, req.json())
        return f"{entity}/Keys({key_id(table, columns)})"
    raise ODataError(
        405, "", f"{req.method} EntityDefinitions({key}){'/' + rest if rest else ''} is not emulated"
    )


# -- change tracking ---------------------------------------------------------------------------


def update_table(conn: Connection, tables: dict[str, Table], table: Table, body: Any) -> None:
    """``PUT EntityDefinitions(...)``: turn change tracking on when the body asks for it.

    Dataverse replaces the whole definition with the body (clients GET it, change it and PUT
    it back); the emulator reads only ``ChangeTrackingEnabled`` and keeps everything else.

    Raises:
        ODataError: 400 when the body would turn change tracking off: once on it stays on. The
            status and code of that refusal are unconfirmed (generic InvalidArgument here).
    """
    if not isinstance(body, dict):
        raise ODataError(400, INVALID_ARGUMENT, "The table definition must be a JSON object")
    wanted = body.get("ChangeTrackingEnabled")
    if isinstance(wanted, dict):  # tolerate the managed-property shape
        wanted = wanted.get("Value")
    if wanted is None or bool(wanted) == table.change_tracking:
        return
    if not wanted:
        raise ODataError(
            400,
            INVALID_ARGUMENT,
            f"Change tracking of table '{table.logical_name}' is on and cannot be turned off again.",
        )
    set_change_tracking(conn, tables, table, enabled=True)


def set_change_tracking(conn: Connection, tables: dict[str, Table], table: Table, *, enabled: bool) -> None:
    """Set ``ChangeTrackingEnabled`` of ``table`` and store the schema (admin: either way)."""
    table.change_tracking = enabled
    write_meta(conn, "schema", schema_to_json(tables))


# -- columns -----------------------------------------------------------------------------------


def create_attribute(conn: Connection, tables: dict[str, Table], table: Table, body: Any) -> Attribute:
    """Add the column an ``AttributeMetadata`` body describes to ``table``.

    Rows that exist keep no value in the new column (null); creates that leave a Boolean column
    out store its ``DefaultValue``.

    Raises:
        ODataError: 400 for a type the emulator does not create, a ``SchemaName`` without a
            customization prefix (status and code unconfirmed), or a name in use
            (``DuplicateAttributeSchemaName``; the status is unconfirmed).
    """
    if not isinstance(body, dict):
        raise ODataError(400, INVALID_ARGUMENT, "The attribute definition must be a JSON object")
    kind = _attribute_type(body)
    schema_name = _schema_name(body, "column")
    name = schema_name.lower()
    taken = {column for column, _ in storage_columns(table)}
    if name in taken:
        raise ODataError(
            400,
            DUPLICATE_ATTRIBUTE,
            f"An attribute named '{name}' already exists on table '{table.logical_name}'.",
        )
    attr = Attribute(
        name,
        kind,
        date_only=kind == DATETIME and _is_date_only(body),
        options=_options(kind, body.get("OptionSet")),
        custom=True,
        schema_name=schema_name,
        display_name=label_text(body.get("DisplayName")),
        max_length=_max_length(kind, body.get("MaxLength")),
        required_level=str((body.get("RequiredLevel") or {}).get("Value") or "None"),
        default=bool(body["DefaultValue"])
        if kind == BOOLEAN and body.get("DefaultValue") is not None
        else None,
    )
    conn.exec_driver_sql(f"ALTER TABLE {quote(table.logical_name)} ADD COLUMN {quote(name)} {sql_type(attr)}")
    table.attributes = {**table.attributes, name: attr}
    write_meta(conn, "schema", schema_to_json(tables))
    return attr


def label_text(label: Any) -> str:
    """The text of a ``Label`` object (its user label, else its first localized label)."""
    if not isinstance(label, dict):
        return ""
    user = label.get("UserLocalizedLabel")
    if isinstance(user, dict) and user.get("Label"):
        return str(user["Label"])
    for loc in label.get("LocalizedLabels") or []:
        if isinstance(loc, dict) and loc.get("Label"):
            return str(loc["Label"])
    return ""


def _attribute_type(body: Mapping[str, Any]) -> str:
    odata_type = str(body.get("@odata.type", "")).lstrip("#").removeprefix("Microsoft.Dynamics.CRM.")
    if odata_type in _CREATABLE:
        return _CREATABLE[odata_type]
    if not odata_type and str(body.get("AttributeType", "")) in _CREATABLE.values():
        return str(body["AttributeType"])
    raise ODataError(
        400,
        INVALID_ARGUMENT,
        f"The emulator creates columns of these types only: {', '.join(sorted(_CREATABLE))}"
        f" (got @odata.type {body.get('@odata.type')!r})",
    )


def _schema_name(body: Mapping[str, Any], what: str) -> str:
    name = str(body.get("SchemaName") or "")
    if not _SCHEMA_NAME.match(name):
        raise ODataError(
            400,
            INVALID_ARGUMENT,
            f"The {what} SchemaName {name!r} must start with a customization prefix and an"
            " underscore (for example new_), as the solution publisher's prefix does.",
        )
    return name


def _is_date_only(body: Mapping[str, Any]) -> bool:
    behaviour = body.get("DateTimeBehavior")
    if isinstance(behaviour, dict) and behaviour.get("Value") == "DateOnly":
        return True
    return str(body.get("Format") or "") == "DateOnly"


def _max_length(kind: str, value: Any) -> int | None:
    if kind not in (STRING, MEMO) or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ODataError(400, INVALID_ARGUMENT, f"MaxLength must be a positive integer, got {value!r}")
    return value


def _options(kind: str, option_set: Any) -> tuple[tuple[int, str], ...]:
    """Labels of a Boolean's true/false options, or a Picklist's options (values and labels)."""
    if not isinstance(option_set, dict):
        option_set = {}
    if kind == BOOLEAN:
        true, false = option_set.get("TrueOption") or {}, option_set.get("FalseOption") or {}
        return ((1, label_text(true.get("Label")) or "Yes"), (0, label_text(false.get("Label")) or "No"))
    if kind != PICKLIST:
        return ()
    options = option_set.get("Options")
    if not isinstance(options, list) or not options:
        raise ODataError(
            400,
            INVALID_ARGUMENT,
            "A Picklist column needs OptionSet.Options (global choices are not emulated)",
        )
    try:
        return tuple((int(o["Value"]), label_text(o.get("Label")) or str(o["Value"])) for o in options)
    except (KeyError, TypeError, ValueError):
        raise ODataError(400, INVALID_ARGUMENT, "Every option needs an integer Value") from None


# -- alternate keys ----------------------------------------------------------------------------


def create_key(conn: Connection, tables: dict[str, Table], table: Table, body: Any) -> tuple[str, ...]:
    """Add the alternate key an ``EntityKeyMetadata`` body describes; return its columns.

    A real organization builds the key's index in a background job (``EntityKeyIndexStatus``
    Pending, then Active or Failed); the emulator builds it at once, so the key is Active when
    the call returns, or Failed when the existing rows have duplicate values.

    Raises:
        ODataError: 400 for a bad ``SchemaName``, an unknown column, or a key that exists (by
            name or columns); status and codes unconfirmed.
    """
    if not isinstance(body, dict):
        raise ODataError(400, INVALID_ARGUMENT, "The key definition must be a JSON object")
    schema_name = _schema_name(body, "key")
    columns = _key_columns(table, body.get("KeyAttributes"))
    known = [*table.alternate_keys, *(tuple(k.split(",")) for k in table.key_info)]
    names = {info.get("SchemaName", "").lower() for info in table.key_info.values()}
    if any(sorted(k) == sorted(columns) for k in known) or schema_name.lower() in names:
        raise ODataError(
            400,
            INVALID_ARGUMENT,
            f"Table '{table.logical_name}' already has an alternate key"
            f" {schema_name!r} or one on ({', '.join(columns)}).",
        )
    status = "Active" if _build_key_index(conn, table, columns) else "Failed"
    table.key_info = {
        **table.key_info,
        ",".join(columns): {
            "SchemaName": schema_name,
            "DisplayName": label_text(body.get("DisplayName")) or schema_name,
            "Status": status,
        },
    }
    if status == "Active":
        table.alternate_keys = (*table.alternate_keys, columns)
    write_meta(conn, "schema", schema_to_json(tables))
    return columns


def _key_columns(table: Table, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise ODataError(400, INVALID_ARGUMENT, "KeyAttributes must be a non-empty list of column names")
    columns = tuple(c.lower() for c in value)
    unknown = [c for c in columns if c not in table.attributes]
    if unknown:
        raise ODataError(
            400,
            INVALID_ARGUMENT,
            f"Table '{table.logical_name}' has no column {', '.join(map(repr, unknown))} for the key.",
        )
    if len(set(columns)) != len(columns):
        raise ODataError(400, INVALID_ARGUMENT, "KeyAttributes names a column twice")
    return columns


def _build_key_index(conn: Connection, table: Table, columns: tuple[str, ...]) -> bool:
    """Create the key's unique index; False (nothing created) when existing rows collide."""
    name = "ak_" + table.logical_name + "_" + "_".join(columns)
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(
            f"CREATE UNIQUE INDEX {quote(name)} ON {quote(table.logical_name)}"
            f" ({', '.join(map(quote, columns))})"
        )
    except Exception as exc:  # SQLAlchemy wraps sqlite3.IntegrityError
        savepoint.rollback()
        if isinstance(getattr(exc, "orig", exc), sqlite3.IntegrityError):
            return False
        raise
    savepoint.commit()
    return True


# -- bare mode ---------------------------------------------------------------------------------


def apply_bare(conn: Connection, tables: dict[str, Table], *, again: bool) -> dict[str, Any]:
    """Drop the sync-filter column everywhere and turn change tracking off on the custom tables.

    Args:
        conn: A connection inside a transaction.
        tables: The live schema (changed in place).
        again: Apply even when the database says bare mode was applied before (the admin action);
            False for ``--bare`` on start-up, which applies it once per database.

    Returns:
        What was done: ``applied``, ``dropped`` (tables that lost the column), ``untracked``.
    """
    done_at = read_meta(conn).get(BARE_META_KEY)
    if done_at and not again:
        return {"applied": False, "applied_before": done_at, "dropped": [], "untracked": []}
    dropped = []
    for table in list(tables.values()):
        if SYNC_FILTER_COLUMN in table.attributes:
            change_column(conn, tables, {"entity": table.logical_name, "drop": SYNC_FILTER_COLUMN})
            dropped.append(table.logical_name)
    untracked = []
    for name in BARE_UNTRACKED_TABLES:
        custom = tables.get(name)
        if custom is not None and custom.change_tracking:
            set_change_tracking(conn, tables, custom, enabled=False)
            untracked.append(custom.logical_name)
    write_meta(conn, BARE_META_KEY, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return {"applied": True, "dropped": dropped, "untracked": untracked}
