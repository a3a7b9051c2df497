"""Record errors: failed records retried with exponential backoff, parked after N attempts.

One row per (entity, direction, source record, field, code). Recording the same failure again
in the same run changes nothing (idempotent task retries); in a later run it counts as a new
attempt. After ``max_attempts`` the row is parked until someone re-queues it or the source
record changes (the engine then calls :func:`requeue_errors` for that record).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import and_, or_, select, tuple_, update

from crm_sync.state.db import as_utc, chunks, upsert, utcnow
from crm_sync.state.models import RecordError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_KEY = ("entity", "direction", "source_id", "field", "code")
# Code of the record errors a reconciliation's repair re-queues (the next run re-reads them).
REQUEUE_CODE = "RECONCILE"
ERROR_ROW_COLUMNS = (
    "id",
    "entity",
    "direction",
    "source_id",
    "field",
    "code",
    "message",
    "payload_ref",
    "attempts",
    "first_seen",
    "last_seen",
    "next_attempt_at",
    "parked",
    "resolved_at",
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``base * 2**(attempts-1)`` capped at ``cap``; park at ``max_attempts``."""

    base: timedelta = timedelta(minutes=5)
    cap: timedelta = timedelta(hours=24)
    max_attempts: int = 10

    def delay(self, attempts: int) -> timedelta:
        """Wait before the next attempt after ``attempts`` failures."""
        return min(self.base * (2 ** max(attempts - 1, 0)), self.cap)


def _incoming(errors: pd.DataFrame) -> dict[tuple[str, ...], dict[str, Any]]:
    """Error-frame rows (transform ``ERROR_COLUMNS`` or ``source_id``/``message``) by key."""
    frame = errors.rename(columns={"record_id": "source_id", "reason": "message"})
    missing = {"entity", "direction", "source_id", "code", "message"} - set(frame.columns)
    if missing:
        raise ValueError(f"errors frame lacks columns {sorted(missing)}")
    if "field" not in frame:
        frame = frame.assign(field="")
    cols = [*_KEY, "message", *(["payload_ref"] if "payload_ref" in frame else [])]
    plain = frame[cols].astype(object).where(frame[cols].notna(), None)
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for rec in plain.to_dict("records"):
        rec["field"] = rec["field"] or ""
        key = tuple(str(rec[k]) for k in _KEY)
        if key in out:
            # Several reasons for one key in a batch: keep them all in one message.
            out[key]["message"] = f"{out[key]['message']}; {rec['message']}"
        else:
            out[key] = {k: str(v) if k in _KEY else v for k, v in rec.items()}
    return out


def record_errors(
    session: Session,
    errors: pd.DataFrame,
    *,
    run_id: str,
    policy: RetryPolicy | None = None,
    now: datetime | None = None,
) -> int:
    """Record failed records; idempotent within one run.

    Args:
        session: Open session (the caller commits).
        errors: Frame with ``entity``, ``direction``, ``record_id`` (or ``source_id``),
            ``field``, ``code``, ``reason`` (or ``message``) and optionally ``payload_ref`` —
            the transforms' errors frame fits as is.
        run_id: The DAG run; a second call with the same run id does not count an attempt.
        policy: Backoff and parking policy.
        now: Current time (tests).

    Returns:
        Number of error rows written.
    """
    policy = policy or RetryPolicy()
    now = now or utcnow()
    incoming = _incoming(errors)
    existing: dict[tuple[str, ...], Any] = {}
    keys = list(incoming)
    cols = [getattr(RecordError, k) for k in _KEY]
    for part in chunks(keys, 200):
        found = session.execute(select(RecordError).where(tuple_(*cols).in_(part))).scalars()
        existing.update({tuple(getattr(e, k) for k in _KEY): e for e in found})
    rows = []
    for key, rec in incoming.items():
        old = existing.get(key)
        if old is not None and old.last_run_id == run_id and old.resolved_at is None:
            attempts, first_seen = old.attempts, old.first_seen
        elif old is not None and old.resolved_at is None:
            attempts, first_seen = old.attempts + 1, old.first_seen
        else:
            attempts, first_seen = 1, now
        parked = attempts >= policy.max_attempts
        rows.append(
            {
                **rec,
                "payload_ref": rec.get("payload_ref"),
                "last_run_id": run_id,
                "attempts": attempts,
                "first_seen": first_seen,
                "last_seen": now,
                "next_attempt_at": None if parked else now + policy.delay(attempts),
                "parked": parked,
                "resolved_at": None,
            }
        )
    update_cols = [c for c in rows[0] if c not in _KEY] if rows else []
    written = upsert(session, RecordError, rows, keys=_KEY, update=update_cols)
    parked_now = sum(1 for r in rows if r["parked"])
    if parked_now:
        log.warning("%d record errors parked after %d attempts", parked_now, policy.max_attempts)
    return written


def _open(entity: str | None, direction: str | None) -> list[Any]:
    """Conditions for the open errors of ``entity``/``direction``, on the table's Core columns
    (they serve ORM statements as well, and keep a Core select free of the ORM's set-up)."""
    c = RecordError.__table__.c
    conds: list[Any] = [c.resolved_at.is_(None)]
    if entity:
        conds.append(c.entity == entity)
    if direction:
        conds.append(c.direction == direction)
    return conds


OPEN_LOOKUP_FROM = 2_000  # records from which their open errors are read first


def _update_open(
    session: Session, entity: str, direction: str, source_ids: Iterable[str], *conds: Any, **values: Any
) -> int:
    """Set ``values`` on the open errors of these records (and ``conds``); returns rows changed."""
    wanted = {str(s) for s in source_ids}
    if len(wanted) > OPEN_LOOKUP_FROM:
        # A load settles every record it wrote, tens of thousands in a bulk unit, and almost
        # none of them has an open error: read the open ones once rather than updating by IN
        # lists of 500 (16% of a full copy's load task in its profile).
        # A Core select on the table: the first ORM select of a task process costs about 0.4 s
        # (measured in a bulk unit's load), and a load task sends no other.
        table = RecordError.__table__
        stmt = select(table.c.source_id).where(*_open(entity, direction), *conds)
        wanted &= {str(s) for s in session.execute(stmt).scalars()}
    changed = 0
    for part in chunks(sorted(wanted)):
        result = session.execute(
            update(RecordError)
            .where(*_open(entity, direction), RecordError.source_id.in_(part), *conds)
            .values(**values)
        )
        changed += int(getattr(result, "rowcount", 0) or 0)
    return changed


def resolve_errors(
    session: Session, entity: str, direction: str, source_ids: Iterable[str], now: datetime | None = None
) -> int:
    """Mark every open error of these records resolved (they synced); returns rows changed."""
    done = {"resolved_at": now or utcnow(), "parked": False, "next_attempt_at": None}
    return _update_open(session, entity, direction, source_ids, **done)


def park_errors(session: Session, entity: str, direction: str, source_ids: Iterable[str]) -> int:
    """Park the open errors of these records now (e.g. a fatal, non-retriable API error)."""
    return _update_open(session, entity, direction, source_ids, parked=True, next_attempt_at=None)


def retry_now(
    session: Session, entity: str, direction: str, source_ids: Iterable[str], now: datetime | None = None
) -> int:
    """Make the open, unparked errors of these records due at once (the next run retries them)."""
    parked = RecordError.__table__.c.parked  # Core: the conditions go into a Core select too
    return _update_open(
        session, entity, direction, source_ids, parked.is_(False), next_attempt_at=now or utcnow()
    )


def requeue_errors(
    session: Session,
    *,
    entity: str | None = None,
    direction: str | None = None,
    source_ids: Iterable[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Un-park open errors and make them due now with a fresh attempt count; returns rows changed."""
    conds = [*_open(entity, direction), RecordError.parked.is_(True)]
    values = {"parked": False, "attempts": 0, "next_attempt_at": now or utcnow()}
    if source_ids is None:
        result = session.execute(update(RecordError).where(*conds).values(**values))
        return int(getattr(result, "rowcount", 0) or 0)
    changed = 0
    for part in chunks(sorted({str(s) for s in source_ids})):
        result = session.execute(
            update(RecordError).where(*conds, RecordError.source_id.in_(part)).values(**values)
        )
        changed += int(getattr(result, "rowcount", 0) or 0)
    return changed


def _frame(session: Session, conds: list[Any], limit: int | None) -> pd.DataFrame:
    cols = [getattr(RecordError, c) for c in ERROR_ROW_COLUMNS]
    stmt = select(*cols).where(*conds).order_by(RecordError.entity, RecordError.source_id, RecordError.id)
    if limit:
        stmt = stmt.limit(limit)
    frame = pd.DataFrame([tuple(r) for r in session.execute(stmt)], columns=list(ERROR_ROW_COLUMNS))
    for col in ("first_seen", "last_seen", "next_attempt_at", "resolved_at"):
        frame[col] = frame[col].map(as_utc)
    return frame


def due_errors(
    session: Session,
    *,
    entity: str | None = None,
    direction: str | None = None,
    now: datetime | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Open, unparked errors whose backoff has expired: the records to retry now."""
    when = now or utcnow()
    conds = [*_open(entity, direction), RecordError.parked.is_(False)]
    conds.append(or_(RecordError.next_attempt_at.is_(None), RecordError.next_attempt_at <= when))
    return _frame(session, conds, limit)


def parked_errors(
    session: Session, *, entity: str | None = None, direction: str | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Open errors that are parked (listed by the CLI, re-queued with :func:`requeue_errors`)."""
    return _frame(session, [*_open(entity, direction), RecordError.parked.is_(True)], limit)


def open_errors(
    session: Session, *, entity: str | None = None, since: datetime | None = None, limit: int | None = None
) -> pd.DataFrame:
    """All unresolved errors (optionally last seen since ``since``), e.g. for the daily digest."""
    conds = _open(entity, None)
    if since is not None:
        conds.append(and_(RecordError.last_seen >= since))
    return _frame(session, conds, limit)
