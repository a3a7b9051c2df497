"""The change backlog: per entity and direction, what the last peek saw that no run has committed.

The watchers (:mod:`crm_sync.watch`) peek at each source's change feed from the committed
watermark without moving it and store what they saw here; a run's commit empties the row (the
next peek fills it again with whatever arrived meanwhile). The status console shows it, and the
freshness alert fires on the age of its oldest change.

    record_peek(s, entity="lead", direction="d2m", pending=3, oldest_change_at=t0, newest_change_at=t1)
    mark_committed(s, entity="lead", direction="d2m")
    rows = backlog_rows(s)      # [{"entity", "direction", "pending", "oldest_age_seconds", ...}]
"""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - SQLAlchemy resolves Mapped[...] at runtime
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from crm_sync.state.db import as_utc, upsert, utcnow
from crm_sync.state.models import Base

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class ChangeBacklog(Base):
    """What the last peek at one entity's source saw beyond the committed watermark."""

    __tablename__ = "change_backlog"

    entity: Mapped[str] = mapped_column(String(64), primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), primary_key=True)  # d2m / m2d
    pending: Mapped[int] = mapped_column(Integer)
    oldest_change_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    newest_change_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    peeked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the freshness alert fired for the current backlog; cleared when the backlog empties.
    alerted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


_KEYS = ("entity", "direction")


def _check_direction(direction: str) -> None:
    if direction not in ("d2m", "m2d"):
        raise ValueError(f"backlog direction must be d2m or m2d, not {direction!r}")


def record_peek(
    session: Session,
    *,
    entity: str,
    direction: str,
    pending: int,
    oldest_change_at: datetime | None,
    newest_change_at: datetime | None,
    now: datetime | None = None,
) -> None:
    """Store what a peek saw; an empty peek also ends the current alert episode.

    Raises:
        ValueError: A negative count or an unknown direction.
    """
    _check_direction(direction)
    if pending < 0:
        raise ValueError(f"backlog of {entity}/{direction}: pending must be zero or more, not {pending}")
    row: dict[str, Any] = {
        "entity": entity,
        "direction": direction,
        "pending": int(pending),
        "oldest_change_at": as_utc(oldest_change_at) if pending else None,
        "newest_change_at": as_utc(newest_change_at) if pending else None,
        "peeked_at": as_utc(now) or utcnow(),
    }
    update = ["pending", "oldest_change_at", "newest_change_at", "peeked_at"]
    if not pending:
        row["alerted_at"] = None
        update.append("alerted_at")
    upsert(session, ChangeBacklog, [row], keys=_KEYS, update=update)


def mark_committed(
    session: Session,
    *,
    entity: str,
    direction: str,
    now: datetime | None = None,
    through: datetime | None = None,
) -> None:
    """A run of ``entity``/``direction`` committed the changes made before ``through``.

    The backlog empties unless the last peek saw a change made at or after ``through`` (the
    run's extract start): then a change may wait that this run did not carry, and the row keeps
    its count until the next peek recounts it, rather than showing a false empty backlog.
    Both sources stamp changes to the whole second (Dataverse ``modifiedon``, Marketo
    ``activityDate``), so a change stamped with the extract's own second may have been made
    after the extract began: it counts as waiting.
    """
    _check_direction(direction)
    when = as_utc(now) or utcnow()
    row = session.get(ChangeBacklog, (entity, direction))
    limit = as_utc(through)
    if row is not None and row.pending and limit is not None:
        newest = as_utc(row.newest_change_at) or as_utc(row.peeked_at)
        if newest is not None and newest >= limit.replace(microsecond=0):
            row.committed_at = when
            return
    values = {
        "entity": entity,
        "direction": direction,
        "pending": 0,
        "oldest_change_at": None,
        "newest_change_at": None,
        "committed_at": when,
        "alerted_at": None,
    }
    upsert(session, ChangeBacklog, [values], keys=_KEYS, update=list(values)[2:])


def mark_alerted(session: Session, *, entity: str, direction: str, at: datetime | None = None) -> None:
    """Remember that the freshness alert fired for the current backlog of ``entity``/``direction``."""
    row = session.get(ChangeBacklog, (entity, direction))
    if row is not None:
        row.alerted_at = as_utc(at) or utcnow()


def backlog_rows(session: Session, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every backlog row as a dict, sorted by entity and direction.

    Returns:
        Dicts with ``entity``, ``direction``, ``pending``, ``oldest_change_at``,
        ``newest_change_at``, ``peeked_at``, ``committed_at``, ``alerted_at`` (aware datetimes
        or None) and ``oldest_age_seconds`` (now minus the oldest pending change, None when
        nothing is pending).
    """
    when = as_utc(now) or utcnow()
    out = []
    stmt = select(ChangeBacklog).order_by(ChangeBacklog.entity, ChangeBacklog.direction)
    for r in session.execute(stmt).scalars():
        oldest = as_utc(r.oldest_change_at)
        out.append(
            {
                "entity": r.entity,
                "direction": r.direction,
                "pending": int(r.pending),
                "oldest_change_at": oldest,
                "newest_change_at": as_utc(r.newest_change_at),
                "peeked_at": as_utc(r.peeked_at),
                "committed_at": as_utc(r.committed_at),
                "alerted_at": as_utc(r.alerted_at),
                "oldest_age_seconds": max((when - oldest).total_seconds(), 0.0)
                if oldest is not None and r.pending
                else None,
            }
        )
    return out
