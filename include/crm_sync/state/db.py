"""Engine, sessions, migrations and the dialect-neutral upsert of the state store.

SQLite (the default) is opened in WAL mode with a busy timeout, and every transaction starts
with ``BEGIN IMMEDIATE``: writers then queue on the lock instead of failing when a read
transaction tries to upgrade, which makes the file safe for several task processes at once.
PostgreSQL is used as is.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, TableClause, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session

from crm_sync.localenv import PROJECT_DIR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    import pandas as pd
    from sqlalchemy.sql.dml import Insert

log = logging.getLogger(__name__)

URL_ENV = "CRM_SYNC_STATE_URL"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 60
READ_ONLY = "mds_read_only"  # execution option of read_scope's connections


class JsonText(str):
    """A JSON column's value given as its JSON text already (stored as it is on SQLite, parsed
    for SQLAlchemy's own JSON serialiser elsewhere): the load stores each record's staged hash
    text without parsing it and serialising it again."""


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Return ``value`` as aware UTC (SQLite hands back naive datetimes that are UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def default_url() -> str:
    """The state-store URL: ``$CRM_SYNC_STATE_URL`` or a SQLite file under ``var/``."""
    return os.environ.get(URL_ENV) or f"sqlite:///{PROJECT_DIR / 'var' / 'state.db'}"


def _sqlite_setup(engine: Engine) -> None:
    """WAL, busy timeout and BEGIN IMMEDIATE for a SQLite engine (SQLAlchemy's pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the driver's deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A read-only scope (read_scope) begins deferred: it reads a WAL snapshot and never
        # holds the write lock, so a long read (a million ids in chunks) keeps no writer waiting.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def make_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """Create an engine for the state store.

    Args:
        url: SQLAlchemy URL; defaults to :func:`default_url`.
        **kwargs: Passed to :func:`sqlalchemy.create_engine`.

    Returns:
        The engine. For SQLite the parent directory is created if needed.
    """
    parsed = make_url(url or default_url())
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
        engine = create_engine(parsed, **kwargs)
        _sqlite_setup(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session whose work is committed on success and rolled back on error."""
    with Session(engine) as session, session.begin():
        yield session


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session for reads only; on SQLite it does not take the write lock.

    Every other transaction on SQLite begins ``IMMEDIATE`` (writers queue instead of failing),
    which would make a long read block the writers of other tasks for its whole duration.
    """
    with Session(engine.execution_options(**{READ_ONLY: True})) as session, session.begin():
        yield session


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config built in code (no alembic.ini), optionally bound to ``engine``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(url: str | URL | Engine | None = None, revision: str = "head") -> None:
    """Migrate the state store to ``revision`` (idempotent; safe to run from several processes).

    Args:
        url: Database URL or an existing engine; defaults to :func:`default_url`.
        revision: Target revision.
    """
    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        command.upgrade(alembic_config(engine), revision)
        log.info(
            "state store at %s migrated to %s", engine.url.render_as_string(hide_password=True), revision
        )
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def insert_for(session: Session, table: TableClause) -> Insert:
    """A dialect-specific INSERT that supports ``on_conflict_do_update``/``do_nothing``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"state store supports sqlite and postgresql, not {dialect}")


def _upsert_statement(
    session: Session, model: type[DeclarativeBase], keys: Sequence[str], update: Sequence[str] | None
) -> Any:
    stmt: Any = insert_for(session, cast("TableClause", model.__table__))
    if update:
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}
        )
    return stmt.on_conflict_do_nothing(index_elements=list(keys))


def upsert(
    session: Session,
    model: type[DeclarativeBase],
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    update: Sequence[str] | None = None,
) -> int:
    """Insert ``rows`` into ``model``'s table or, on a key clash, update the ``update`` columns.

    With no ``update`` columns a clash leaves the stored row as it is.

    One statement for the whole list (executemany), so a batch is one round trip.

    Returns:
        Number of rows sent.
    """
    if not rows:
        return 0
    return _store(session, model, keys, update, len(rows), lambda: _columns_of(rows), lambda: rows)


def _store(
    session: Session,
    model: type[DeclarativeBase],
    keys: Sequence[str],
    update: Sequence[str] | None,
    count: int,
    columns: Callable[[], Mapping[str, Sequence[Any]] | None],
    rows: Callable[[], Sequence[Mapping[str, Any]]],
) -> int:
    """Run the upsert of ``count`` rows: on SQLite through the DB-API's executemany with the
    statement compiled once (``columns``: the values column by column, None when the rows differ
    in their keys), else, or when a left-out column has a computed default, through SQLAlchemy's
    own executemany (``rows``). SQLAlchemy builds and processes every row's parameters through
    its compiler: half of a full copy's consent-log time on SQLite."""
    stmt = _upsert_statement(session, model, keys, update)
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        values = columns()
        table = cast("TableClause", model.__table__)
        if values is not None and _executemany(conn, stmt, table, values, count):
            return count
    session.execute(stmt, [_parsed_json(r) for r in rows()])
    return count


def _columns_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]] | None:
    """The rows' values column by column; None when they differ in their keys."""
    names = list(rows[0])
    if any(len(r) != len(names) for r in rows):
        return None
    try:
        return {n: [r[n] for r in rows] for n in names}
    except KeyError:  # same number of keys, other names
        return None


def _parsed_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with any :class:`JsonText` value parsed (SQLAlchemy serialises JSON values itself)."""
    return {k: json.loads(v) if isinstance(v, JsonText) else v for k, v in row.items()}


def _executemany(
    conn: Any, stmt: Any, table: TableClause, columns: Mapping[str, Sequence[Any]], count: int
) -> bool:
    """Run ``stmt`` for ``count`` rows given column by column through the DB-API's executemany,
    compiled once; False (nothing run) when a left-out column has a computed default."""
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(columns))
    values: list[Sequence[Any]] = []
    for name in compiled.positiontup or ():
        column = columns.get(name)
        if column is None:
            default = table.c[name].default
            if default is None or not default.is_scalar:
                return False
            column = [default.arg] * count
        processor = conn.dialect.type_descriptor(table.c[name].type).bind_processor(conn.dialect)
        if processor is None:
            values.append(column)
        elif isinstance(table.c[name].type, JSON):
            values.append([v if v.__class__ is JsonText else processor(v) for v in column])
        else:
            values.append([processor(v) for v in column])
    conn.exec_driver_sql(compiled.string, list(zip(*values, strict=True)))
    return True


def upsert_frame(
    session: Session,
    model: type[DeclarativeBase],
    frame: pd.DataFrame,
    keys: Sequence[str],
    update: Sequence[str] | None = None,
) -> int:
    """:func:`upsert` for the rows of a frame (missing values as ``None`` already), read column by
    column instead of as one dict a row."""
    if frame.empty:
        return 0
    return _store(
        session,
        model,
        keys,
        update,
        len(frame),
        lambda: {str(c): frame[c].tolist() for c in frame.columns},
        lambda: frame.to_dict("records"),
    )


def chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """Split ``values`` for IN lists that stay under every driver's parameter limit."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
