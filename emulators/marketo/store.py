"""SQLite state of the Marketo emulator, through SQLAlchemy Core.

Leads live in a table with one column per field (bulk extract and filters need real columns
and indexes); the other Lead-Database objects share one table holding JSON documents keyed by
kind and external key. Activities are a single append-only table: its integer id is the
position that paging tokens encode. ``lead_fields`` records how this database's lead fields
differ from the catalogue (bare mode, fields created through the API; see ``lead_schema``), and
``emulator_state`` remembers one-off settings such as "bare mode was applied".

One connection is shared by all request threads and guarded by a lock: SQLite serialises
writers anyway, and one connection keeps the hot paths free of pool overhead.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.pool import StaticPool

from emulators.marketo import lead_schema
from emulators.marketo.fields import LEAD_FIELDS, FieldDef

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

metadata = MetaData()


def _column(field: FieldDef) -> Column[Any]:
    if field.name == "id":
        return Column("id", Integer, primary_key=True, autoincrement=False)
    if field.data_type in ("integer", "score", "boolean"):
        return Column(field.name, Integer)
    if field.data_type in ("float", "currency", "percent"):
        return Column(field.name, Float)
    # Marketo matches emails and keys case-insensitively (GUIDs included, sync reference §3.7).
    return Column(field.name, Text(collation="NOCASE"))


leads = Table("leads", metadata, *(_column(f) for f in LEAD_FIELDS))
for _name in (
    "email",
    "externalPersonId",
    "msdRecordId",
    "externalCompanyId",
    "externalSalesPersonId",
    "updatedAt",
    "createdAt",
):
    Index(f"ix_leads_{_name}", leads.c[_name])

activities = Table(
    "activities",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("leadId", Integer, nullable=False),
    Column("activityDate", Text, nullable=False),
    Column("activityTypeId", Integer, nullable=False),
    Column("primaryAttributeValueId", Integer),
    Column("primaryAttributeValue", Text),
    Column("fieldName", Text),  # the changed field of a Change Data Value (13) activity
    Column("payload", Text, nullable=False),  # JSON: {"fields": [...], "attributes": [...]}
    Index("ix_activities_type_id", "activityTypeId", "id"),
    Index("ix_activities_date", "activityDate"),
)

objects = Table(
    "objects",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=False),
    Column("kind", Text, nullable=False),
    Column("guid", Text, nullable=False),
    Column("dedupeKey", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("createdAt", Text, nullable=False),
    Column("updatedAt", Text, nullable=False),
    UniqueConstraint("kind", "dedupeKey", name="uq_objects_kind_key"),
    Index("ix_objects_kind_guid", "kind", "guid"),
)

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("exportId", Text, primary_key=True),
    Column("entity", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("request", Text, nullable=False),  # JSON of the create body
    Column("createdAt", Text, nullable=False),
    Column("queuedAt", Text),
    Column("startedAt", Text),
    Column("finishedAt", Text),
    Column("numberOfRecords", Integer),
    Column("fileSize", Integer),
    Column("fileChecksum", Text),
    Column("filePath", Text),
    Column("errorMsg", Text),
)

import_jobs = Table(
    "import_jobs",
    metadata,
    Column("batchId", Integer, primary_key=True, autoincrement=False),
    Column("status", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("lookupField", Text, nullable=False),
    Column("createdAt", Text, nullable=False),
    Column("filePath", Text, nullable=False),
    Column("numOfLeadsProcessed", Integer, nullable=False, default=0),
    Column("numOfRowsFailed", Integer, nullable=False, default=0),
    Column("numOfRowsWithWarning", Integer, nullable=False, default=0),
    Column("message", Text),
)


# Programs are assets (asset API), kept apart from the Lead-Database objects; a program's channel
# names its progression statuses (``programs.CHANNELS``).
programs = Table(
    "programs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", Text(collation="NOCASE"), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("type", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("status", Text, nullable=False, default=""),
    Column("folderId", Integer, nullable=False),
    Column("folderName", Text, nullable=False),
    Column("createdAt", Text, nullable=False),
    Column("updatedAt", Text, nullable=False),
)

# One row per (program, lead) while the lead is a member; "Not in Program" deletes the row.
program_members = Table(
    "program_members",
    metadata,
    Column("programId", Integer, primary_key=True, autoincrement=False),
    Column("leadId", Integer, primary_key=True, autoincrement=False),
    Column("memberId", Integer, nullable=False),  # the activities' "Program Member ID"
    Column("statusName", Text, nullable=False),
    Column("acquiredBy", Integer, nullable=False, default=0),
    Column("reachedSuccess", Integer, nullable=False, default=0),
    Column("reachedSuccessDate", Text),
    Column("membershipDate", Text, nullable=False),
    Column("createdAt", Text, nullable=False),
    Column("updatedAt", Text, nullable=False),
    Index("ix_program_members_lead", "leadId"),
    Index("ix_program_members_updated", "programId", "updatedAt"),
)

lead_fields = Table(
    "lead_fields",
    metadata,
    Column("name", Text, primary_key=True),
    Column("present", Integer, nullable=False),
    Column("dataType", Text),  # null: a catalogue field bare mode hides, never created
    Column("displayName", Text),
    Column("length", Integer),
    Column("description", Text),
    Column("isHidden", Integer, nullable=False, default=0),
    Column("isHtmlEncodingInEmail", Integer, nullable=False, default=1),
    Column("isSensitive", Integer, nullable=False, default=0),
    Column("fieldId", Integer),
    Column("updatedAt", Text),
)

emulator_state = Table(
    "emulator_state",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

BARE_APPLIED = "bare_applied_at"


def make_engine(db_path: Path) -> Engine:
    """Create the engine for ``db_path`` with pragmas tuned for an emulator (speed over durability)."""
    engine = create_engine(
        f"sqlite:///{db_path}",
        poolclass=StaticPool,
        connect_args={"check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # An emulator loses nothing of value in a crash; skipping fsync makes writes fast.
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    return engine


class Store:
    """The database plus the id counters, shared by all routes.

    Args:
        db_path: SQLite file; created with its tables when missing.
    """

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path
        self.files_dir = db_path.with_name(db_path.name + ".files")
        self.files_dir.mkdir(exist_ok=True)
        self.engine = make_engine(db_path)
        metadata.create_all(self.engine)
        _add_new_lead_columns(self.engine)
        self.lock = threading.RLock()
        with self.engine.connect() as conn:
            self.lead_schema = read_lead_schema(conn)
            self.next_lead_id = _max(conn, "leads", "id") + 1
            self.next_activity_id = _max(conn, "activities", "id") + 1
            self.next_object_pk = _max(conn, "objects", "pk") + 1
            self.next_batch_id = _max(conn, "import_jobs", "batchId") + 1
            # Program ids start at 1001 like a new instance's; member ids keep counting as leads do.
            self.next_program_id = max(_max(conn, "programs", "id"), 1000) + 1
            self.next_member_id = _max(conn, "program_members", "memberId") + 1

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """Hold the lock and a transaction for the duration of the block."""
        with self.lock, self.engine.begin() as conn:
            yield conn

    def take_lead_ids(self, count: int) -> int:
        """Reserve ``count`` lead ids and return the first (caller holds the lock)."""
        first = self.next_lead_id
        self.next_lead_id += count
        return first

    def take_activity_ids(self, count: int) -> int:
        first = self.next_activity_id
        self.next_activity_id += count
        return first

    def take_object_pks(self, count: int) -> int:
        first = self.next_object_pk
        self.next_object_pk += count
        return first

    def take_program_ids(self, count: int) -> int:
        first = self.next_program_id
        self.next_program_id += count
        return first

    def take_member_ids(self, count: int) -> int:
        first = self.next_member_id
        self.next_member_id += count
        return first

    def reload_lead_schema(self, conn: Connection) -> lead_schema.LeadSchema:
        """Re-read the lead fields after a change made on ``conn`` (caller holds the lock)."""
        self.lead_schema = read_lead_schema(conn)
        return self.lead_schema


def read_lead_schema(conn: Connection) -> lead_schema.LeadSchema:
    """Build the lead schema of the database behind ``conn``."""
    columns = {row[1]: str(row[2]) for row in conn.exec_driver_sql('PRAGMA table_info("leads")')}
    states = [
        lead_schema.FieldState(
            name=r.name,
            present=bool(r.present),
            data_type=r.dataType,
            display=r.displayName,
            length=r.length,
            description=r.description,
            hidden=bool(r.isHidden),
            html_encoding=bool(r.isHtmlEncodingInEmail),
            sensitive=bool(r.isSensitive),
            field_id=r.fieldId,
        )
        for r in conn.execute(lead_fields.select())
    ]
    return lead_schema.build(states, columns, bare=get_state(conn, BARE_APPLIED) is not None)


def get_state(conn: Connection, key: str) -> str | None:
    """A value of ``emulator_state``, or None."""
    value = conn.execute(emulator_state.select().where(emulator_state.c.key == key)).first()
    return None if value is None else str(value.value)


def set_state(conn: Connection, key: str, value: str) -> None:
    """Set a value of ``emulator_state``."""
    conn.execute(emulator_state.delete().where(emulator_state.c.key == key))
    conn.execute(emulator_state.insert().values(key=key, value=value))


def add_lead_column(conn: Connection, field: FieldDef) -> None:
    """Add a lead column for a new custom field (its values start empty, as in Marketo)."""
    column = _column(field)
    ddl = column.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f'ALTER TABLE leads ADD COLUMN "{field.name}" {ddl}')


def _add_new_lead_columns(engine: Engine) -> None:
    """Add lead fields the catalogue gained since ``engine``'s database was created.

    ``create_all`` never alters an existing table, and a seeded database is worth keeping when
    the catalogue grows; the new columns start empty, as a new custom field does in Marketo.
    """
    with engine.begin() as conn:
        present = {row[1] for row in conn.exec_driver_sql('PRAGMA table_info("leads")')}
        for column in leads.columns:
            if column.name not in present:
                ddl = column.type.compile(dialect=engine.dialect)
                conn.exec_driver_sql(f'ALTER TABLE leads ADD COLUMN "{column.name}" {ddl}')


def _max(conn: Connection, table: str, column: str) -> int:
    value = conn.execute(text(f'SELECT MAX("{column}") FROM {table}')).scalar()
    return int(value or 0)
