"""The Dataverse emulator's state: one SQLite file, opened through SQLAlchemy.

Every Dataverse table is one SQL table whose columns are the logical names (lookups hold the
target GUID; polymorphic lookups also hold the target table in ``<name>type``). Beside them:

- ``meta``: organization id, business unit, the application user, and the live schema (JSON);
- ``deleted_records``: tombstones for change tracking (entity, id, version of the delete);
- ``teammembership``: the N:N intersect table of ``teammembership_association``;
- ``delta_tokens``: delta tokens handed out, with the time each was last used.

``versionnumber`` comes from one organization-wide counter, so "everything after version V"
is the change-tracking query for every table, deletes included.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event

from emulators.dynamics.errors import ODataError
from emulators.dynamics.schema import (
    BIGINT,
    BOOLEAN,
    CHOICE_TYPES,
    DECIMAL,
    DOUBLE,
    INTEGER,
    MONEY,
    UNIQUEID,
    Attribute,
    Table,
    initial_tables,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

_SIDE_TABLES = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS deleted_records (entity TEXT NOT NULL, id TEXT NOT NULL,"
    " versionnumber INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_deleted_records_version ON deleted_records (entity, versionnumber)",
    "CREATE TABLE IF NOT EXISTS teammembership (teamid TEXT NOT NULL, systemuserid TEXT NOT NULL,"
    " PRIMARY KEY (teamid, systemuserid))",
    "CREATE INDEX IF NOT EXISTS ix_teammembership_user ON teammembership (systemuserid)",
    # Keyed by token and table: two tables read in the same second get the same token text.
    "CREATE TABLE IF NOT EXISTS delta_tokens (token TEXT NOT NULL, entity TEXT NOT NULL,"
    " version INTEGER NOT NULL, last_used REAL NOT NULL, expired INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (token, entity))",
]


def sql_type(attr: Attribute) -> str:
    """Return the SQLite column type for an attribute (strings compare case-insensitively,
    as Dataverse's SQL Server collation does)."""
    if attr.type in (INTEGER, BIGINT, BOOLEAN) or attr.type in CHOICE_TYPES:
        return "INTEGER"
    if attr.type in (MONEY, DECIMAL, DOUBLE):
        return "REAL"
    return "TEXT COLLATE NOCASE"


def quote(name: str) -> str:
    """Quote an SQL identifier (names come from the schema, never raw from a request)."""
    return '"' + name.replace('"', '""') + '"'


def storage_columns(table: Table) -> list[tuple[str, str]]:
    """Return (column, SQL type) for every stored column of ``table``, type columns included."""
    cols: list[tuple[str, str]] = []
    for attr in table.attributes.values():
        cols.append((attr.name, sql_type(attr)))
        if attr.polymorphic:
            cols.append((f"{attr.name}type", "TEXT"))
    return cols


def _table_ddl(table: Table) -> list[str]:
    t = quote(table.logical_name)
    cols = []
    for name, typ in storage_columns(table):
        extra = " NOT NULL" if name == table.primary_id else ""
        cols.append(f"{quote(name)} {typ}{extra}")
    ddl = [f"CREATE TABLE IF NOT EXISTS {t} ({', '.join(cols)})"]
    ddl.extend(index_ddl(table))
    return ddl


def index_ddl(table: Table) -> list[str]:
    """Return the statements creating every index of ``table``.

    The primary key is a unique index rather than ``PRIMARY KEY`` so that the seeder can drop
    all indexes, bulk-load, and build them once at the end (much faster than keeping random GUID
    B-trees up to date row by row).
    """
    t = quote(table.logical_name)
    ddl = [
        f"CREATE UNIQUE INDEX IF NOT EXISTS {quote('pk_' + table.logical_name)} ON {t}"
        f" ({quote(table.primary_id)})"
    ]
    ddl.append(
        f"CREATE INDEX IF NOT EXISTS {quote('ix_' + table.logical_name + '_version')} ON {t} (versionnumber)"
    )
    ddl.append(
        f"CREATE INDEX IF NOT EXISTS {quote('ix_' + table.logical_name + '_modifiedon')} ON {t} (modifiedon)"
    )
    for key in table.alternate_keys:
        name = "ak_" + table.logical_name + "_" + "_".join(key)
        ddl.append(f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(name)} ON {t} ({', '.join(map(quote, key))})")
    for attr in table.attributes.values():
        if attr.is_lookup and attr.name not in ("createdby", "modifiedby"):
            ddl.append(
                f"CREATE INDEX IF NOT EXISTS {quote('ix_' + table.logical_name + '_' + attr.name)}"
                f" ON {t} ({quote(attr.name)})"
            )
    return ddl


def drop_indexes(conn: Connection, table: Table) -> None:
    """Drop every index of ``table`` (the seeder rebuilds them with :func:`index_ddl`)."""
    for (name,) in conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        (table.logical_name,),
    ).fetchall():
        conn.exec_driver_sql(f"DROP INDEX {quote(name)}")


def schema_to_json(tables: dict[str, Table]) -> str:
    return json.dumps({name: asdict(t) for name, t in tables.items()})


def schema_from_json(text: str) -> dict[str, Table]:
    raw = json.loads(text)
    tables: dict[str, Table] = {}
    for name, t in raw.items():
        attrs = {
            k: Attribute(
                **{**a, "targets": tuple(a["targets"]), "options": tuple(tuple(o) for o in a["options"])}
            )
            for k, a in t["attributes"].items()
        }
        keys = tuple(tuple(k) for k in t["alternate_keys"])
        tables[name] = Table(**{**t, "attributes": attrs, "alternate_keys": keys})
    return tables


def raw_connection(conn: Connection) -> sqlite3.Connection:
    """The DB-API connection under ``conn`` (same transaction and savepoints).

    Used on the hot paths (page reads, inserts), where SQLAlchemy's per-statement and per-row
    processing would cost more than SQLite itself.
    """
    return conn.connection.driver_connection  # type: ignore[return-value]


def new_guid() -> str:
    return str(uuid.uuid4())


class Store:
    """The emulator's database and the organization-wide version counter.

    Writes are serialized by ``write_lock`` (SQLite has one writer anyway; taking the lock in
    Python avoids "database is locked" retries). Reads run concurrently thanks to WAL mode.
    """

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path
        self.engine: Engine = create_engine(f"sqlite:///{db_path}", connect_args={"check_same_thread": False})
        event.listen(self.engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling breaks SAVEPOINT (needed for $batch change sets):
        # let SQLAlchemy emit BEGIN itself, as its SQLite dialect documentation recommends.
        event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        self.write_lock = threading.RLock()
        with self.engine.begin() as conn:
            self.tables = initialize(conn)
            self._version = max_version(conn, self.tables)
            self.meta = read_meta(conn)

    # -- schema -----------------------------------------------------------------------------

    def by_set(self, entity_set: str) -> Table | None:
        for table in self.tables.values():
            if table.entity_set == entity_set:
                return table
        return None

    def reload(self, conn: Connection) -> None:
        """Re-read schema and meta after an admin action changed them."""
        self.tables = schema_from_json(read_meta(conn)["schema"])
        self.meta = read_meta(conn)

    # -- versions ---------------------------------------------------------------------------

    def next_version(self) -> int:
        """Return the next organization-wide row version (call with ``write_lock`` held)."""
        self._version += 1
        return self._version

    @property
    def current_version(self) -> int:
        return self._version


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def read_meta(conn: Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.exec_driver_sql("SELECT key, value FROM meta").fetchall()}


def write_meta(conn: Connection, key: str, value: str) -> None:
    conn.exec_driver_sql("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def initialize(conn: Connection, make_uuid: Any = None) -> dict[str, Table]:
    """Create the tables of a fresh database and the organization's fixed records.

    Returns the live schema (the stored one when the database already exists).
    """
    for ddl in _SIDE_TABLES:
        conn.exec_driver_sql(ddl)
    meta = read_meta(conn)
    if "schema" in meta:
        return _add_missing_tables(conn, schema_from_json(meta["schema"]))
    tables = initial_tables()
    for table in tables.values():
        for ddl in _table_ddl(table):
            conn.exec_driver_sql(ddl)
    write_meta(conn, "schema", schema_to_json(tables))
    create_organization(conn, make_uuid)
    return tables


def _add_missing_tables(conn: Connection, tables: dict[str, Table]) -> dict[str, Table]:
    """Create the tables a database stored by an older emulator lacks (its own ones are kept)."""
    missing = {name: t for name, t in initial_tables().items() if name not in tables}
    if missing:
        for table in missing.values():
            for ddl in _table_ddl(table):
                conn.exec_driver_sql(ddl)
        tables = {**tables, **missing}
        write_meta(conn, "schema", schema_to_json(tables))
    return tables


def create_organization(conn: Connection, make_uuid: Any = None) -> None:
    """Write the organization id, its root business unit and the application user.

    The application user is the ``systemuser`` a client-credentials token acts as (WhoAmI).
    """
    make = make_uuid or new_guid
    org_id, bu_id, user_id = str(make()), str(make()), str(make())
    write_meta(conn, "organization_id", org_id)
    write_meta(conn, "businessunit_id", bu_id)
    write_meta(conn, "app_user_id", user_id)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conn.exec_driver_sql(
        "INSERT OR REPLACE INTO businessunit (businessunitid, name, createdon, modifiedon, versionnumber)"
        " VALUES (?, ?, ?, ?, 1)",
        (bu_id, "emulated-org", now, now),
    )
    conn.exec_driver_sql(
        "INSERT OR REPLACE INTO systemuser (systemuserid, firstname, lastname, fullname,"
        " internalemailaddress, domainname, accessmode, isdisabled, businessunitid, applicationid,"
        " createdon, modifiedon, versionnumber)"
        " VALUES (?, '#', 'mds-sync application user', '# mds-sync application user', NULL,"
        " ?, 4, 0, ?, ?, ?, ?, 1)",
        (user_id, f"{user_id}@emulated.local", bu_id, str(make()), now, now),
    )


def max_version(conn: Connection, tables: dict[str, Table]) -> int:
    """Return the highest row version in use (the counter resumes from it after a restart)."""
    best = conn.exec_driver_sql("SELECT COALESCE(MAX(versionnumber), 0) FROM deleted_records").scalar() or 0
    for table in tables.values():
        got = conn.exec_driver_sql(
            f"SELECT COALESCE(MAX(versionnumber), 0) FROM {quote(table.logical_name)}"
        ).scalar()
        best = max(best, int(got or 0))
    return int(best)


def bulk_insert(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert many rows with one prepared statement (the seeder's fast path)."""
    sql = (
        f"INSERT INTO {quote(table.logical_name)} ({', '.join(map(quote, columns))})"
        f" VALUES ({', '.join('?' for _ in columns)})"
    )
    conn.exec_driver_sql(sql, list(rows))


def refresh_sandbox(conn: Connection, tables: dict[str, Table]) -> dict[str, Any]:
    """Reissue every record id and the organization id, as copying an environment does.

    Lookups and team memberships follow their records; change-tracking history and delta
    tokens are dropped, because a copied environment starts a new history.
    """
    conn.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS idmap (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
    conn.exec_driver_sql("DELETE FROM idmap")
    count = 0
    for table in tables.values():
        ids = [
            r[0]
            for r in conn.exec_driver_sql(
                f"SELECT {quote(table.primary_id)} FROM {quote(table.logical_name)}"
            ).fetchall()
        ]
        if ids:  # an empty parameter list would be taken as one execution without parameters
            # OR IGNORE: an activity's activitypointer row shares its id and must keep sharing it
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO idmap (old, new) VALUES (?, ?)", [(i, new_guid()) for i in ids]
            )
        count += len(ids)
    remap = "(SELECT new FROM idmap WHERE old = {col})"
    for table in tables.values():
        t = quote(table.logical_name)
        # GUID columns follow too (campaignitem.entityid names a list); other GUIDs (Entra ids)
        # match no record id and stay as they are.
        cols = [table.primary_id] + [
            a.name
            for a in table.attributes.values()
            if a.is_lookup or (a.type == UNIQUEID and a.name != table.primary_id)
        ]
        sets = ", ".join(f"{quote(c)} = COALESCE({remap.format(col=quote(c))}, {quote(c)})" for c in cols)
        conn.exec_driver_sql(f"UPDATE {t} SET {sets}")
    conn.exec_driver_sql(
        f"UPDATE teammembership SET teamid = {remap.format(col='teamid')},"
        f" systemuserid = {remap.format(col='systemuserid')}"
    )
    meta = read_meta(conn)
    for key in ("businessunit_id", "app_user_id"):
        new = conn.exec_driver_sql("SELECT new FROM idmap WHERE old = ?", (meta[key],)).scalar()
        if new:
            write_meta(conn, key, str(new))
    write_meta(conn, "organization_id", new_guid())
    conn.exec_driver_sql("DELETE FROM deleted_records")
    conn.exec_driver_sql("UPDATE delta_tokens SET expired = 1")
    conn.exec_driver_sql("DROP TABLE idmap")
    return {"records_reissued": count}


def reset_data(conn: Connection, tables: dict[str, Table], make_uuid: Any = None) -> None:
    """Drop every table and start again with the initial schema and an empty organization."""
    for table in tables.values():
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(table.logical_name)}")
    for side in ("meta", "deleted_records", "teammembership", "delta_tokens"):
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {side}")
    initialize(conn, make_uuid)


def _drop_key(
    conn: Connection, tables: dict[str, Table], table: Table, key: tuple[str, ...]
) -> dict[str, Any]:
    if key not in table.alternate_keys:
        raise ODataError(
            400, "", f"schema change: entity {table.logical_name!r} has no alternate key {list(key)}"
        )
    name = "ak_" + table.logical_name + "_" + "_".join(key)
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {quote(name)}")
    table.alternate_keys = tuple(k for k in table.alternate_keys if k != key)
    table.key_info = {k: v for k, v in table.key_info.items() if k != ",".join(key)}
    write_meta(conn, "schema", schema_to_json(tables))
    return {"entity": table.logical_name, "keys": [list(k) for k in table.alternate_keys]}


def change_column(conn: Connection, tables: dict[str, Table], spec: dict[str, Any]) -> dict[str, Any]:
    """Drop, rename or add a column, for schema-drift tests.

    ``spec`` is ``{"entity": "lead", "drop": "jobtitle"}``, ``{"entity": "lead", "rename":
    {"from": "jobtitle", "to": "new_jobtitle"}}`` or ``{"entity": "lead", "add": {"name":
    "new_score", "type": "Integer"}}``; ``{"entity": "contact", "drop_key": ["emailaddress1"]}``
    removes an alternate key (a real org may not have the emulator's seeded keys);
    ``{"entity": "opportunity", "change_tracking": false}`` turns change tracking off (or on).

    Raises:
        ODataError: 400 naming the entity or column that does not fit.
    """
    name = str(spec.get("entity", ""))
    table = tables.get(name)
    if table is None:
        raise ODataError(400, "", f"schema change: no entity {name!r}")
    if "drop_key" in spec:
        return _drop_key(conn, tables, table, tuple(str(c).lower() for c in spec["drop_key"]))
    if "change_tracking" in spec:
        table.change_tracking = bool(spec["change_tracking"])
        write_meta(conn, "schema", schema_to_json(tables))
        return {"entity": name, "change_tracking": table.change_tracking}
    t = quote(table.logical_name)
    attrs = dict(table.attributes)
    if "drop" in spec or "rename" in spec:
        old = str(spec["drop"] if "drop" in spec else spec["rename"].get("from"))
        attr = attrs.get(old)
        if attr is None or old == table.primary_id:
            raise ODataError(400, "", f"schema change: entity {name!r} has no droppable column {old!r}")
        if attr.polymorphic:
            raise ODataError(400, "", f"schema change: {name}.{old} is polymorphic; not supported")
        for (index,) in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql LIKE ?",
            (table.logical_name, f'%"{old}"%'),
        ).fetchall():
            conn.exec_driver_sql(f"DROP INDEX {quote(index)}")
        if "drop" in spec:
            conn.exec_driver_sql(f"ALTER TABLE {t} DROP COLUMN {quote(old)}")
            del attrs[old]
        else:
            new = str(spec["rename"].get("to", "")).lower()
            if not new.isidentifier() or new in attrs:
                raise ODataError(400, "", f"schema change: bad new name {new!r} for {name}.{old}")
            conn.exec_driver_sql(f"ALTER TABLE {t} RENAME COLUMN {quote(old)} TO {quote(new)}")
            attrs = {
                (new if k == old else k): (
                    Attribute(**{**asdict(v), "name": new, "schema_name": ""}) if k == old else v
                )
                for k, v in attrs.items()
            }
        table.alternate_keys = tuple(k for k in table.alternate_keys if old not in k)
        table.key_info = {k: v for k, v in table.key_info.items() if old not in k.split(",")}
    elif "add" in spec:
        new = str(spec["add"].get("name", "")).lower()
        typ = str(spec["add"].get("type", "String"))
        if not new.isidentifier() or new in attrs:
            raise ODataError(400, "", f"schema change: bad new column {new!r} for {name}")
        attr = Attribute(new, typ, custom=True)
        conn.exec_driver_sql(f"ALTER TABLE {t} ADD COLUMN {quote(new)} {sql_type(attr)}")
        attrs[new] = attr
    else:
        raise ODataError(400, "", "schema change: give one of drop, rename, add")
    table.attributes = attrs
    write_meta(conn, "schema", schema_to_json(tables))
    return {"entity": name, "columns": sorted(attrs)}
