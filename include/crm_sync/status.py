"""What the sync status view shows: per entity and direction, runs, lag, volume, quota and errors.

Plain queries on the state store that return plain dicts, so the Airflow UI plugin
(``plugins/crm_sync_status``), a CLI or a test can use them alike. Nothing here imports Airflow.

- **last successful run**: the newest ``success`` row of the run ledger;
- **watermark lag**: now minus the time the watermark was last stored (how stale the next
  extract's starting point is; it grows when runs stop succeeding);
- **records synced**: the sum of the ledger's ``loaded`` over runs that ended in the last hour
  and the last day;
- **API calls today**: the Marketo calls the sync sent since the quota day began (00:00 US
  Central time, when Marketo resets its daily quota), against the daily quota and the share of
  it left for other integrations: the budget guard's figures (:mod:`crm_sync.guards.quota`);
- **record errors**: unresolved rows of the record-error table (retrying or parked), with the
  re-queue action for parked ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from crm_sync.state.db import as_utc, utcnow
from crm_sync.state.errors import requeue_errors
from crm_sync.state.models import RecordError, RunLedger, Watermark

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from sqlalchemy.orm import Session

DEFAULT_DAILY_QUOTA = 50_000  # Variable mds_marketo_daily_quota, as the sync DAGs read it
DEFAULT_RESERVE_SHARE = 0.2  # Variable mds_quota_reserve_share
ERROR_LIST_LIMIT = 500
DIRECTIONS = ("d2m", "m2d")
_KNOWN_DIRECTIONS = {"both", *DIRECTIONS}


def _covered(direction: str) -> tuple[str, ...]:
    """The one-way directions a ledger/config direction covers (``both`` covers d2m and m2d)."""
    return DIRECTIONS if direction == "both" else (direction,)


def _iso(value: datetime | None) -> str | None:
    aware = as_utc(value)
    return aware.isoformat() if aware else None


def _ledger_time(row: Any) -> datetime:
    return as_utc(row.ended_at) or as_utc(row.started_at) or utcnow()


def blank_row(entity: str, direction: str, *, configured: bool = True) -> dict[str, Any]:
    """The row of an entity and direction that has no runs, watermarks or errors yet."""
    return {
        "entity": entity,
        "direction": direction,
        "configured": configured,
        "last_success_at": None,
        "last_success_run_id": None,
        "last_run_status": None,
        "last_run_at": None,
        "watermarks": [],
        "lag_seconds": None,
        "synced_last_hour": 0,
        "synced_last_day": 0,
        "failed_last_day": 0,
        "errors_retrying": 0,
        "errors_parked": 0,
    }


def entity_status(
    session: Session, configured: Mapping[str, str], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """One dict per entity and direction: last success, watermark lag, records synced, errors.

    Args:
        session: Open state-store session.
        configured: Entity name → its configured direction (``both``, ``d2m`` or ``m2d``); rows
            also appear for entities or directions found only in the ledger (an entity removed
            from the configuration still shows its history).
        now: Current time (tests).

    Returns:
        Dicts with ``entity``, ``direction``, ``configured``, ``last_success_at``,
        ``last_success_run_id``, ``last_run_status``, ``last_run_at``, ``watermarks`` (a list of
        ``{"direction", "updated_at", "lag_seconds"}``), ``lag_seconds`` (the largest of those,
        or None before the first commit), ``synced_last_hour``, ``synced_last_day``,
        ``failed_last_day``, ``errors_retrying`` and ``errors_parked``; sorted by entity.

    Raises:
        ValueError: A configured direction is not ``both``, ``d2m`` or ``m2d``.
    """
    now = as_utc(now) or utcnow()
    for name, direction in configured.items():
        if direction not in _KNOWN_DIRECTIONS:
            raise ValueError(
                f"entity {name!r}: direction {direction!r} is not one of {sorted(_KNOWN_DIRECTIONS)}"
            )
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)

    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(entity: str, direction: str) -> dict[str, Any]:
        key = (entity, direction)
        if key not in rows:
            rows[key] = blank_row(entity, direction, configured=configured.get(entity) == direction)
        return rows[key]

    for name, direction in configured.items():
        row(name, direction)

    ledger = session.execute(
        select(
            RunLedger.run_id,
            RunLedger.entity,
            RunLedger.direction,
            RunLedger.status,
            RunLedger.loaded,
            RunLedger.failed,
            RunLedger.started_at,
            RunLedger.ended_at,
        ).order_by(RunLedger.started_at, RunLedger.id)
    ).all()
    for rec in ledger:  # oldest first, so the last assignment wins
        r = row(rec.entity, rec.direction)
        at = _ledger_time(rec)
        r["last_run_status"], r["last_run_at"] = rec.status, _iso(at)
        if rec.status == "success":
            r["last_success_at"], r["last_success_run_id"] = _iso(at), rec.run_id
        if rec.ended_at is not None and at >= day_ago:
            r["synced_last_day"] += int(rec.loaded or 0)
            r["failed_last_day"] += int(rec.failed or 0)
            if at >= hour_ago:
                r["synced_last_hour"] += int(rec.loaded or 0)

    def owner(entity: str, one_way: str) -> dict[str, Any] | None:
        """The row a one-way watermark or error belongs to: its own direction's, else ``both``'s."""
        for direction in (one_way, "both"):
            if (entity, direction) in rows:
                return rows[(entity, direction)]
        return None

    for wm in session.execute(select(Watermark.entity, Watermark.direction, Watermark.updated_at)).all():
        if wm.entity.startswith("_"):  # engine-internal cursors (the shared person feed head)
            continue
        r = owner(wm.entity, wm.direction) or row(wm.entity, wm.direction)
        updated = as_utc(wm.updated_at)
        lag = max((now - updated).total_seconds(), 0.0) if updated else None
        r["watermarks"].append({"direction": wm.direction, "updated_at": _iso(updated), "lag_seconds": lag})
        if lag is not None and (r["lag_seconds"] is None or lag > r["lag_seconds"]):
            r["lag_seconds"] = lag

    counts = session.execute(
        select(RecordError.entity, RecordError.direction, RecordError.parked, func.count())
        .where(RecordError.resolved_at.is_(None))
        .group_by(RecordError.entity, RecordError.direction, RecordError.parked)
    ).all()
    for entity, direction, parked, n in counts:
        r = owner(entity, direction) or row(entity, direction)
        r["errors_parked" if parked else "errors_retrying"] += int(n)

    for r in rows.values():
        r["watermarks"].sort(key=lambda w: w["direction"])
    return sorted(rows.values(), key=lambda r: (r["entity"], r["direction"]))


def quota_usage(
    session: Session,
    *,
    daily_quota: int = DEFAULT_DAILY_QUOTA,
    reserve_share: float = DEFAULT_RESERVE_SHARE,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Marketo calls the sync sent since the quota day began, against the daily quota.

    The figures are the budget guard's own (:func:`crm_sync.guards.quota.quota_status`, summed
    from the per-stage call log), so the page shows exactly what the guard decides on. This is
    the one place the status view gets its quota figures from.

    Returns:
        ``quota_status``'s dict (``daily_quota``, ``reserve``, ``usable``, ``used_today``,
        ``left``, ``resets_at``, ``used_by_entity``...) plus ``day_start`` (UTC ISO time) and
        ``percent`` (share of the daily quota used).

    Raises:
        ValueError: A negative quota, or a reserve share outside [0, 1).
    """
    from crm_sync.guards.quota import quota_day_start, quota_status

    if daily_quota < 0:
        raise ValueError(f"daily quota must be zero or more, not {daily_quota}")
    if not 0.0 <= reserve_share < 1.0:
        raise ValueError(f"quota reserve share must be in [0, 1), not {reserve_share}")
    when = as_utc(now) or utcnow()
    out = quota_status(session, now=when, daily_quota=daily_quota, reserve_share=reserve_share)
    out["day_start"] = quota_day_start(when).isoformat()
    out["percent"] = round(100.0 * out["used_today"] / daily_quota, 1) if daily_quota else 0.0
    return out


def error_list(
    session: Session, *, entity: str | None = None, limit: int = ERROR_LIST_LIMIT
) -> tuple[list[dict[str, Any]], int]:
    """Unresolved record errors, parked first, newest first, with their reasons.

    Returns:
        ``(rows, total)``: at most ``limit`` dicts (``id``, ``entity``, ``direction``,
        ``source_id``, ``field``, ``code``, ``message``, ``attempts``, ``first_seen``,
        ``last_seen``, ``next_attempt_at``, ``parked``) and the number of unresolved errors.
    """
    conds: list[Any] = [RecordError.resolved_at.is_(None)]
    if entity:
        conds.append(RecordError.entity == entity)
    total = session.execute(select(func.count()).select_from(RecordError).where(*conds)).scalar_one()
    stmt = (
        select(RecordError)
        .where(*conds)
        .order_by(RecordError.parked.desc(), RecordError.last_seen.desc(), RecordError.id.desc())
        .limit(limit)
    )
    out = []
    for e in session.execute(stmt).scalars():
        out.append(
            {
                "id": e.id,
                "entity": e.entity,
                "direction": e.direction,
                "source_id": e.source_id,
                "field": e.field,
                "code": e.code,
                "message": e.message,
                "attempts": e.attempts,
                "first_seen": _iso(e.first_seen),
                "last_seen": _iso(e.last_seen),
                "next_attempt_at": _iso(e.next_attempt_at),
                "parked": bool(e.parked),
            }
        )
    return out, int(total)


def requeue(
    session: Session,
    *,
    entity: str | None = None,
    direction: str | None = None,
    source_ids: Iterable[str] | None = None,
    known_entities: Iterable[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Re-queue parked record errors (all, one entity/direction, or some records) for the next run.

    Args:
        session: Open session (the caller commits).
        entity: Only this entity's errors.
        direction: Only this direction's (``d2m`` or ``m2d``).
        source_ids: Only these source records.
        known_entities: When given, ``entity`` must be one of them.
        now: Current time (tests).

    Returns:
        Number of errors re-queued.

    Raises:
        ValueError: Unknown entity or direction, or a record id without an entity.
    """
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {list(DIRECTIONS)}")
    if entity is not None and known_entities is not None and entity not in set(known_entities):
        raise ValueError(f"entity {entity!r} is not a configured entity")
    ids = None if source_ids is None else [s.strip() for s in source_ids if s and s.strip()]
    if ids is not None and entity is None:
        raise ValueError("re-queueing single records needs their entity")
    return requeue_errors(session, entity=entity, direction=direction, source_ids=ids, now=now)


def format_age(seconds: float | None) -> str:
    """A short human duration: ``"45 s"``, ``"12 min"``, ``"3 h 5 min"``, ``"2 d 4 h"``; ``"—"`` for None."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
