"""Activities: the ``activitypointer`` mirror that timelines read, and activity parties.

Every table with ``IsActivity`` (``campaignresponse``, the custom ``new_marketoactivity``) keeps
one row in ``activitypointer`` with the same ``activityid``, its shared columns and
``activitytypecode`` = the table's logical name; the row follows every create, update and
delete of the activity (same ``versionnumber``), so a timeline is
``GET activitypointers?$filter=_regardingobjectid_value eq <id>``.

Parties (who an activity is with: a campaign response's customer, participation type 11) live in
``activityparty``. They are written through the activity's collection-valued navigation property
``<activity>_activity_parties`` (deep insert on ``POST``, replaced on ``PATCH``), each item as
``{"partyid_contact@odata.bind": "/contacts(<id>)", "participationtypemask": 11}``, and read with
``$expand=<activity>_activity_parties`` or ``GET activityparties?$filter=_activityid_value eq <id>``.
Replacing all of an activity's parties on ``PATCH`` is the emulator's simplification
(unconfirmed: Dataverse replaces the parties of the party-list columns the body names).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from emulators.dynamics.errors import DUPLICATE, INVALID_ARGUMENT, ODataError
from emulators.dynamics.marketing_schema import ACTIVITY_ID, PARTY, POINTER
from emulators.dynamics.query import select_attrs
from emulators.dynamics.store import new_guid, quote, raw_connection, storage_columns

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from emulators.dynamics.schema import Table
    from emulators.dynamics.service import ApiRequest, Refs, WebApi

_CHUNK = 500


def parties_property(table: Table) -> str:
    """The collection-valued navigation property of an activity's parties."""
    return f"{table.logical_name}_activity_parties"


def _shared_columns(activity: Table, pointer: Table) -> list[str]:
    """Stored columns the pointer copies from the activity (``activitytypecode`` is set apart).

    Cached on the activity table for the current ``attributes`` dicts of both tables (a schema
    change replaces them), as :meth:`Table.by_wire_name` is: every activity write asks.
    """
    cached = activity.__dict__.get("_pointer_columns")
    if cached is not None and cached[0] is activity.attributes and cached[1] is pointer.attributes:
        return list(cached[2])
    own = {name for name, _ in storage_columns(activity)}
    shared = [name for name, _ in storage_columns(pointer) if name in own and name != "activitytypecode"]
    activity.__dict__["_pointer_columns"] = (activity.attributes, pointer.attributes, tuple(shared))
    return shared


def mirror(api: WebApi, conn: Connection, table: Table, rid: str) -> None:
    """Copy activity ``rid`` of ``table`` into ``activitypointer`` (insert or update)."""
    pointer = api.store.tables.get(POINTER)
    if pointer is None:
        return
    columns = _shared_columns(table, pointer)
    row = conn.exec_driver_sql(
        f"SELECT {', '.join(map(quote, columns))} FROM {quote(table.logical_name)}"
        f" WHERE {quote(ACTIVITY_ID)} = ?",
        (rid,),
    ).fetchone()
    if row is None:
        return
    values: dict[str, Any] = dict(zip(columns, row, strict=True))
    values["activitytypecode"] = table.logical_name
    sets = ", ".join(f"{quote(c)} = ?" for c in values)
    updated = conn.exec_driver_sql(
        f"UPDATE {quote(POINTER)} SET {sets} WHERE {quote(ACTIVITY_ID)} = ?", (*values.values(), rid)
    ).rowcount
    if not updated:
        conn.exec_driver_sql(
            f"INSERT INTO {quote(POINTER)} ({', '.join(map(quote, values))})"
            f" VALUES ({', '.join('?' for _ in values)})",
            tuple(values.values()),
        )


def mirror_created(api: WebApi, conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """Insert the pointer row of an activity just inserted with ``values`` (all it stores).

    The same row :func:`mirror` would copy, built from the values instead of read back: a new
    row's other columns are null. An id another activity's pointer holds already is refused as
    a duplicate (``activityid`` is unique across every activity table).
    """
    pointer = api.store.tables.get(POINTER)
    if pointer is None:
        return
    row = {c: values[c] for c in _shared_columns(table, pointer) if c in values}
    row["activitytypecode"] = table.logical_name
    try:
        raw_connection(conn).execute(
            f"INSERT INTO {quote(POINTER)} ({', '.join(map(quote, row))})"
            f" VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    except sqlite3.IntegrityError:
        raise ODataError(
            412,
            DUPLICATE,
            f"A record with matching key values already exists. ({POINTER} {values[ACTIVITY_ID]})",
        ) from None


def mirror_updated(api: WebApi, conn: Connection, table: Table, rid: str, values: dict[str, Any]) -> None:
    """Bring the pointer row of activity ``rid`` up to date with the columns an update set."""
    pointer = api.store.tables.get(POINTER)
    if pointer is None:
        return
    shared = [c for c in _shared_columns(table, pointer) if c in values]
    updated = 0
    if shared:
        updated = (
            raw_connection(conn)
            .execute(
                f"UPDATE {quote(POINTER)} SET {', '.join(f'{quote(c)} = ?' for c in shared)}"
                f" WHERE {quote(ACTIVITY_ID)} = ?",
                (*(values[c] for c in shared), rid),
            )
            .rowcount
        )
    if not updated:  # no pointer row yet (a database older than the mirror): copy the whole row
        mirror(api, conn, table, rid)


def forget(api: WebApi, conn: Connection, rid: str) -> None:
    """After an activity was deleted: drop its pointer row (with a tombstone) and its parties."""
    if POINTER in api.store.tables:
        gone = conn.exec_driver_sql(
            f"DELETE FROM {quote(POINTER)} WHERE {quote(ACTIVITY_ID)} = ?", (rid,)
        ).rowcount
        if gone:
            conn.exec_driver_sql(
                "INSERT INTO deleted_records (entity, id, versionnumber) VALUES (?, ?, ?)",
                (POINTER, rid, api.store.next_version()),
            )
    if PARTY in api.store.tables:
        conn.exec_driver_sql(f"DELETE FROM {quote(PARTY)} WHERE activityid = ?", (rid,))


def split_parties(table: Table, body: Any) -> tuple[Any, list[Any] | None]:
    """Take the parties property out of a write body; None when the body does not name it."""
    name = parties_property(table)
    if not table.is_activity or not isinstance(body, dict) or name not in body:
        return body, None
    rest = {k: v for k, v in body.items() if k != name}
    parties = body[name]
    if not isinstance(parties, list):
        raise ODataError(
            400, INVALID_ARGUMENT, f"'{name}' must be a JSON array of activity parties ({table.logical_name})"
        )
    return rest, parties


def write_parties(
    api: WebApi, conn: Connection, table: Table, rid: str, parties: list[Any], refs: Refs
) -> None:
    """Replace the parties of activity ``rid`` with ``parties`` (items as ``activityparty`` bodies)."""
    party = api.store.tables[PARTY]
    conn.exec_driver_sql(f"DELETE FROM {quote(PARTY)} WHERE activityid = ?", (rid,))
    for index, item in enumerate(parties):
        label = f"{rid} {parties_property(table)}[{index}]"
        values = api._checked_values(conn, party, item, label, refs, creating=True)
        values["activityid"] = rid
        values[party.primary_id] = new_guid()
        api._system_values(party, values, creating=True)
        api._insert(conn, party, values)


def expand_parties(
    api: WebApi,
    conn: Connection,
    req: ApiRequest,
    table: Table,
    records: list[dict[str, Any]],
    name: str,
    select: str | None,
) -> bool:
    """``$expand=<activity>_activity_parties``: put each activity's parties under ``name``.

    Returns:
        False when ``name`` is not the parties property of ``table`` (nothing done).
    """
    if not table.is_activity or name != parties_property(table):
        return False
    party = api.store.tables[PARTY]
    api.require(party, "Read")
    writer = api.writer(party, select_attrs(party, select), set())
    found: dict[str, list[dict[str, Any]]] = {}
    ids = [r[table.primary_id] for r in records]
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = conn.exec_driver_sql(
            f"SELECT activityid, {', '.join(map(quote, writer.columns))} FROM {quote(PARTY)}"
            f" WHERE activityid IN ({','.join('?' * len(chunk))}) ORDER BY rowid",
            tuple(chunk),
        ).fetchall()
        for row in rows:
            found.setdefault(row[0], []).append(writer.record(row[1:]))
    for record in records:
        record[name] = found.get(record[table.primary_id], [])
    return True
