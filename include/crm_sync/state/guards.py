"""State of the run guards: API calls spent per run stage, and the last accepted API schemas.

* ``api_call_log``: one row per (run, entity, stage, system) with the calls the stage sent to
  that system. Each task attempt adds its calls (a retried attempt really spent them), so the
  Marketo calls of a quota day are the sum of the rows written that day. The quota check and the
  status view read it (:mod:`crm_sync.guards.quota`); the commit copies a run's total into the
  run ledger's ``api_calls``.
* ``schema_snapshot``: per system and object (``dynamics``/``contact``, ``marketo``/``leads``),
  the field types last seen by a passing drift check, the day it was read and its fingerprint.
  The drift check compares against it (a changed type, a renamed column) and reuses a Marketo
  describe read the same day instead of spending quota on it again.

* ``visible_rows``: per entity, how many Dataverse rows the application user saw in the last
  full read of its table (the visibility check, :mod:`crm_sync.guards.visibility`).

The models share :class:`crm_sync.state.models.Base`; migrations ``v0003_run_guards`` and
``v0006_visible_rows`` create them.
"""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - SQLAlchemy resolves Mapped[...] at runtime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from crm_sync.state.db import as_utc, insert_for, upsert, utcnow
from crm_sync.state.models import Base

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


PEEK_STAGE = "peek"  # the call-log stage of the watchers' peeks (crm_sync.watch)


class ApiCallLog(Base):
    """API calls one stage of one run sent to one system (summed over the stage's attempts)."""

    __tablename__ = "api_call_log"
    __table_args__ = (
        UniqueConstraint("run_id", "entity", "stage", "system"),
        Index("ix_api_call_log_system_at", "system", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(250))
    entity: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(128))  # task id, plus the batch for a load
    system: Mapped[str] = mapped_column(String(16))  # marketo / dynamics
    calls: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # last time calls were added


class SchemaSnapshot(Base):
    """The fields (name → type) of one API object as last accepted by the drift check."""

    __tablename__ = "schema_snapshot"

    system: Mapped[str] = mapped_column(String(16), primary_key=True)
    object: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    read_on: Mapped[str] = mapped_column(String(10))  # day the fields were read (YYYY-MM-DD)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def add_api_calls(
    session: Session,
    *,
    run_id: str,
    entity: str,
    stage: str,
    calls: dict[str, int],
    at: datetime | None = None,
) -> None:
    """Add the calls a stage attempt sent, per system (``{"marketo": 4, "dynamics": 2}``)."""
    when = at or utcnow()
    table: Any = ApiCallLog.__table__
    for system, n in sorted(calls.items()):
        if n <= 0:
            continue
        stmt: Any = insert_for(session, table).values(
            run_id=run_id, entity=entity, stage=stage, system=system, calls=n, at=when
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "entity", "stage", "system"],
            set_={"calls": table.c.calls + n, "at": when},
        )
        session.execute(stmt)


def run_api_calls(session: Session, run_id: str, entity: str) -> dict[str, int]:
    """Calls a run of an entity sent so far, per system."""
    stmt = (
        select(ApiCallLog.system, func.sum(ApiCallLog.calls))
        .where(ApiCallLog.run_id == run_id, ApiCallLog.entity == entity)
        .group_by(ApiCallLog.system)
    )
    return {str(system): int(total or 0) for system, total in session.execute(stmt)}


def calls_since(session: Session, system: str, since: datetime) -> dict[str, int]:
    """Calls sent to ``system`` in rows last updated at or after ``since``, per entity."""
    stmt = (
        select(ApiCallLog.entity, func.sum(ApiCallLog.calls))
        .where(ApiCallLog.system == system, ApiCallLog.at >= since)
        .group_by(ApiCallLog.entity)
    )
    return {str(entity): int(total or 0) for entity, total in session.execute(stmt)}


def get_snapshot(session: Session, system: str, obj: str) -> SchemaSnapshot | None:
    """The accepted schema of one object, or None before its first passing check."""
    snap = session.get(SchemaSnapshot, (system, obj))
    if snap is not None:
        snap.checked_at = as_utc(snap.checked_at) or snap.checked_at
    return snap


def save_snapshot(
    session: Session, system: str, obj: str, fields: dict[str, str], fingerprint: str, read_on: str
) -> None:
    """Store (or replace) the accepted schema of one object."""
    row = {
        "system": system,
        "object": obj,
        "fingerprint": fingerprint,
        "fields": dict(fields),
        "read_on": read_on,
        "checked_at": utcnow(),
    }
    upsert(session, SchemaSnapshot, [row], keys=("system", "object"), update=list(row)[2:])


class VisibleRows(Base):
    """Rows of one entity's Dataverse table the application user saw in the last full read."""

    __tablename__ = "visible_rows"

    entity: Mapped[str] = mapped_column(String(64), primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    counted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def last_visible_rows(session: Session, entity: str) -> int | None:
    """Rows seen in the entity's last full read, or None before the first one."""
    row = session.get(VisibleRows, entity)
    return None if row is None else int(row.rows)


def record_visible_rows(session: Session, entity: str, rows: int) -> None:
    """Remember the rows a full read of the entity's table saw."""
    values = {"entity": entity, "rows": int(rows), "counted_at": utcnow()}
    upsert(session, VisibleRows, [values], keys=("entity",), update=["rows", "counted_at"])
