"""SQLAlchemy models of the sync's state store.

The schema itself is created and changed only by the Alembic migrations in
``crm_sync/state/migrations``; these models must match them (a test compares the two).
"""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - SQLAlchemy resolves Mapped[...] at runtime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

# Explicit constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the project's naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class Watermark(Base):
    """Where the next extract of an entity in one direction starts (delta link, timestamp, token)."""

    __tablename__ = "watermark"

    entity: Mapped[str] = mapped_column(String(64), primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), primary_key=True)
    token: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# Link states. A handed-over link (a qualified lead's, a merged record's) keeps naming the person
# it handed on, as history: it claims no Marketo id (transforms.lifecycle).
ACTIVE = "active"
CONVERTED = "converted"  # the person went on as another record (a qualified lead)
MERGED = "merged"  # the record was merged into another (in Dynamics, or its person in Marketo)
HANDED_OVER = (CONVERTED, MERGED)
_HELD = "state NOT IN (" + ", ".join(f"'{s}'" for s in HANDED_OVER) + ")"


class IdMap(Base):
    """A link between a Dataverse record and its Marketo record, with what was last synced."""

    __tablename__ = "id_map"
    __table_args__ = (
        UniqueConstraint("entity", "dynamics_id"),
        # One link per Marketo person, but for handed-over links (a merged record's names the
        # survivor's person too): a partial unique index (migration 0007).
        Index(
            "uq_id_map_entity_marketo_id_held",
            "entity",
            "marketo_id",
            unique=True,
            sqlite_where=text(_HELD),
            postgresql_where=text(_HELD),
        ),
        Index("ix_id_map_entity_email", "entity", "email"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity: Mapped[str] = mapped_column(String(64))
    dynamics_id: Mapped[str] = mapped_column(String(64))  # lower-case GUID
    marketo_id: Mapped[str | None] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320))  # lower case, for dedup lookups
    person_type: Mapped[str | None] = mapped_column(String(16))  # Lead / Contact
    state: Mapped[str] = mapped_column(
        String(16), default="active"
    )  # active / stale / orphaned / deleted / converted / merged
    filter_value: Mapped[bool | None] = mapped_column(Boolean)  # last seen sync-filter value
    last_hash_d2m: Mapped[int | None] = mapped_column(BigInteger)
    last_hash_m2d: Mapped[int | None] = mapped_column(BigInteger)
    field_hashes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunLedger(Base):
    """Counts and outcome of one entity/direction within one DAG run."""

    __tablename__ = "run_ledger"
    __table_args__ = (
        UniqueConstraint("run_id", "entity", "direction"),
        Index("ix_run_ledger_entity_started_at", "entity", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(250))
    entity: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    extracted: Mapped[int] = mapped_column(Integer, default=0)
    transformed: Mapped[int] = mapped_column(Integer, default=0)
    loaded: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    conflicts: Mapped[int] = mapped_column(Integer, default=0)
    api_calls: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Change-to-arrival latency of the run's changes (commit time minus the source's modified
    # time), in seconds; None when the run moved nothing or its source gives no modified time.
    latency_p50_s: Mapped[float | None] = mapped_column(Float)
    latency_p95_s: Mapped[float | None] = mapped_column(Float)
    latency_max_s: Mapped[float | None] = mapped_column(Float)


class RecordError(Base):
    """A record that failed to sync; retried with backoff, parked after too many attempts."""

    __tablename__ = "record_error"
    __table_args__ = (
        UniqueConstraint("entity", "direction", "source_id", "field", "code"),
        Index("ix_record_error_due", "resolved_at", "parked", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))
    source_id: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(128), default="")  # "" when not field-specific
    code: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    payload_ref: Mapped[str | None] = mapped_column(Text)
    last_run_id: Mapped[str | None] = mapped_column(String(250))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    parked: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class _FieldEvent:
    """Columns shared by the per-field logs: one row per run, record and field, both values."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[UniqueConstraint]:
        # A constraint object belongs to one table: each log gets its own.
        return (UniqueConstraint("run_id", "entity", "record_key", "field"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(250))
    entity: Mapped[str] = mapped_column(String(64))
    record_key: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(128))
    marketo_value: Mapped[str | None] = mapped_column(Text)
    dynamics_value: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConflictLog(_FieldEvent, Base):
    """A field changed on both sides between two syncs, with both values and the winner."""

    __tablename__ = "conflict_log"

    winner: Mapped[str] = mapped_column(String(16))


class ConsentLog(_FieldEvent, Base):
    """An opt-out or re-subscribe the sync saw on a consent field, with both sides' values.

    ``changed_in`` is the side (or ``both``) where it changed since the last sync; ``outcome``
    is ``opt_out`` (carried to the other side), ``resubscribe`` (carried from the consent owner's
    side) or ``resubscribe_refused`` (not carried; the opt-out written back).
    """

    __tablename__ = "consent_log"

    changed_in: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(32))


class SyncIdentity(Base):
    """The Dataverse organization id / Marketo munchkin id this state store belongs to."""

    __tablename__ = "sync_identity"

    system: Mapped[str] = mapped_column(String(16), primary_key=True)  # dynamics / marketo
    identity: Mapped[str] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
