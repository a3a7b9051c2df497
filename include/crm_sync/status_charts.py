"""The operations console's extra figures: change backlog, calls today and the chart series.

Plain queries on the state store (no Airflow), as :mod:`crm_sync.status`:

- **backlog** per entity and one-way direction: what the watchers' last peek saw beyond the
  committed watermark (table ``change_backlog``) and the age of its oldest change; for the
  marketing syncs, the activities waiting for their person (record errors
  ``PERSON_NOT_SYNCED``) and the program-membership changes waiting in ``membership_pending``;
- **calls today** per entity and system, since the Marketo quota day began;
- **chart series** over the last 24 hours and 7 days: records synced per hour, change-to-arrival
  latency (p50/p95) per run, Marketo calls per hour with the quota day's running total against
  the usable budget, Dataverse calls per 5-minute window against the service-protection limit.

The call log keeps one row per run, entity, stage and system whose ``at`` is the last time
calls were added, so a stage's calls count in the bucket its last attempt ended in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from statistics import median
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from crm_sync.guards.quota import DYNAMICS_WINDOW_CALLS, dynamics_window_calls, quota_day_start
from crm_sync.marketing.activities import ENTITY as ACTIVITY_ENTITY
from crm_sync.marketing.activities import WAITING
from crm_sync.state.backlog import backlog_rows
from crm_sync.state.db import as_utc, utcnow
from crm_sync.state.guards import PEEK_STAGE, ApiCallLog
from crm_sync.state.membership import MembershipPending
from crm_sync.state.models import RecordError, RunLedger
from crm_sync.status import blank_row, iso_utc

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import Session

HOUR = timedelta(hours=1)
WINDOW = timedelta(minutes=5)  # Dataverse service protection: a sliding 300-second window
RANGES = {"24h": timedelta(days=1), "7d": timedelta(days=7)}
SYSTEMS = ("marketo", "dynamics")
LATENCY_POINTS = 400  # more runs than this in a range: one latency point per hour instead


def _floor(value: datetime, step: timedelta) -> datetime:
    """``value`` rounded down to a multiple of ``step`` since the epoch (UTC)."""
    seconds = int(step.total_seconds())
    stamp = int(value.timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, tz=value.tzinfo)


def _buckets(now: datetime, span: timedelta, step: timedelta) -> list[datetime]:
    """Starts of the ``step`` buckets that cover the last ``span`` up to and including ``now``."""
    last = _floor(now, step)
    count = int(span / step)
    return [last - step * (count - 1 - i) for i in range(count)]


# --- backlog ------------------------------------------------------------------------------------


def _backlog_entry(
    direction: str, pending: int, oldest: datetime | None, now: datetime, source: str, **extra: Any
) -> dict[str, Any]:
    age = max((now - oldest).total_seconds(), 0.0) if oldest is not None and pending else None
    return {
        "direction": direction,
        "pending": int(pending),
        "oldest_change_at": iso_utc(oldest) if pending else None,
        "oldest_age_seconds": age,
        "source": source,
        **extra,
    }


def backlog_entries(
    session: Session, *, now: datetime | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every backlog the console shows, by ``(entity, one-way direction)``.

    Returns:
        ``{(entity, direction): {"direction", "pending", "oldest_change_at",
        "oldest_age_seconds", "source", ...}}``. ``source`` is ``peek`` (the watchers' table, with
        ``peeked_at`` and ``committed_at``), ``waiting_person`` (activities whose person is not
        synced yet) or ``membership_pending`` (membership changes waiting for their person).
    """
    when = as_utc(now) or utcnow()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in backlog_rows(session, now=when):
        out[(r["entity"], r["direction"])] = _backlog_entry(
            r["direction"],
            r["pending"],
            r["oldest_change_at"],
            when,
            "peek",
            peeked_at=iso_utc(r["peeked_at"]),
            committed_at=iso_utc(r["committed_at"]),
        )
    waiting = session.execute(
        select(func.count(), func.min(RecordError.first_seen)).where(
            RecordError.entity == ACTIVITY_ENTITY,
            RecordError.code == WAITING,
            RecordError.resolved_at.is_(None),
        )
    ).one()
    if waiting[0]:
        out[(ACTIVITY_ENTITY, "m2d")] = _backlog_entry(
            "m2d", int(waiting[0]), as_utc(waiting[1]), when, "waiting_person"
        )
    pending = session.execute(
        select(
            MembershipPending.direction,
            func.count(),
            func.min(func.coalesce(MembershipPending.occurred_at, MembershipPending.updated_at)),
        ).group_by(MembershipPending.direction)
    ).all()
    for direction, n, oldest in pending:
        out[("program_membership", str(direction))] = _backlog_entry(
            str(direction), int(n), as_utc(oldest), when, "membership_pending"
        )
    return out


def calls_today(session: Session, *, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """API calls per entity and system since the Marketo quota day began (peeks included).

    Returns:
        ``{entity: {"marketo": n, "dynamics": m}}``.
    """
    start = quota_day_start(as_utc(now) or utcnow())
    rows = session.execute(
        select(ApiCallLog.entity, ApiCallLog.system, func.sum(ApiCallLog.calls))
        .where(ApiCallLog.at >= start)
        .group_by(ApiCallLog.entity, ApiCallLog.system)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for entity, system, n in rows:
        out.setdefault(str(entity), dict.fromkeys(SYSTEMS, 0))[str(system)] = int(n or 0)
    return out


def peek_calls_today(session: Session, *, now: datetime | None = None) -> dict[str, int]:
    """Calls the watchers' peeks (call-log stage ``peek``) sent since the quota day began, per system."""
    start = quota_day_start(as_utc(now) or utcnow())
    rows = session.execute(
        select(ApiCallLog.system, func.sum(ApiCallLog.calls))
        .where(ApiCallLog.at >= start, ApiCallLog.stage == PEEK_STAGE)
        .group_by(ApiCallLog.system)
    ).all()
    out = dict.fromkeys(SYSTEMS, 0)
    out.update({str(system): int(n or 0) for system, n in rows})
    return out


def add_console_columns(
    session: Session, rows: Iterable[dict[str, Any]], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Add the backlog and today's calls to the entity rows of :func:`crm_sync.status.entity_status`.

    A one-way backlog belongs to the row of its own direction, else to the entity's ``both``
    row; a backlog of an entity without a row gets a row of its own (as watermarks do).

    Returns:
        The rows (changed in place, new ones appended, sorted by entity and direction), each
        with ``backlog`` (a list of :func:`backlog_entries` values), ``backlog_pending``,
        ``backlog_oldest_age_seconds`` (None when nothing is pending) and ``calls_today``.
    """
    when = as_utc(now) or utcnow()
    by_key = {(r["entity"], r["direction"]): r for r in rows}
    for r in by_key.values():
        r.update(backlog=[], backlog_pending=0, backlog_oldest_age_seconds=None)
    for (entity, direction), entry in sorted(backlog_entries(session, now=when).items()):
        found = by_key.get((entity, direction)) or by_key.get((entity, "both"))
        if found is None:
            found = by_key[(entity, direction)] = blank_row(entity, direction, configured=False)
            found.update(backlog=[], backlog_pending=0, backlog_oldest_age_seconds=None)
        r = found
        r["backlog"].append(entry)
        r["backlog_pending"] += entry["pending"]
        age = entry["oldest_age_seconds"]
        if age is not None and (
            r["backlog_oldest_age_seconds"] is None or age > r["backlog_oldest_age_seconds"]
        ):
            r["backlog_oldest_age_seconds"] = age
    calls = calls_today(session, now=when)
    for r in by_key.values():
        r["calls_today"] = calls.get(r["entity"], dict.fromkeys(SYSTEMS, 0))
    return sorted(by_key.values(), key=lambda r: (r["entity"], r["direction"]))


# --- chart series -------------------------------------------------------------------------------


def _synced(session: Session, buckets: list[datetime], step: timedelta) -> list[dict[str, Any]]:
    start = buckets[0]
    totals = {b: [0, 0] for b in buckets}
    ended = session.execute(
        select(RunLedger.ended_at, RunLedger.loaded, RunLedger.failed).where(RunLedger.ended_at >= start)
    ).all()
    for at, loaded, failed in ended:
        bucket = _floor(as_utc(at) or start, step)
        if bucket in totals:
            totals[bucket][0] += int(loaded or 0)
            totals[bucket][1] += int(failed or 0)
    return [{"t": b.isoformat(), "loaded": v[0], "failed": v[1]} for b, v in totals.items()]


def _latency(session: Session, since: datetime) -> list[dict[str, Any]]:
    """One point per run with a latency; per hour (median p50, highest p95 and max) when there
    are more runs than :data:`LATENCY_POINTS` (a week of 5-minute runs of several entities)."""
    runs = session.execute(
        select(
            RunLedger.run_id,
            RunLedger.entity,
            RunLedger.direction,
            RunLedger.ended_at,
            RunLedger.latency_p50_s,
            RunLedger.latency_p95_s,
            RunLedger.latency_max_s,
        )
        .where(RunLedger.ended_at >= since, RunLedger.latency_p50_s.is_not(None))
        .order_by(RunLedger.ended_at, RunLedger.id)
    ).all()
    points = [
        {
            "t": iso_utc(r.ended_at),
            "run_id": r.run_id,
            "entity": r.entity,
            "direction": r.direction,
            "runs": 1,
            "p50": float(r.latency_p50_s),
            "p95": None if r.latency_p95_s is None else float(r.latency_p95_s),
            "max": None if r.latency_max_s is None else float(r.latency_max_s),
        }
        for r in runs
    ]
    if len(points) <= LATENCY_POINTS:
        return points
    hours: dict[datetime, list[dict[str, Any]]] = {}
    for p in points:
        hours.setdefault(_floor(datetime.fromisoformat(p["t"]), HOUR), []).append(p)
    return [
        {
            "t": hour.isoformat(),
            "run_id": None,
            "entity": "",
            "direction": "",
            "runs": len(group),
            "p50": float(median(p["p50"] for p in group)),
            "p95": max((p["p95"] for p in group if p["p95"] is not None), default=None),
            "max": max((p["max"] for p in group if p["max"] is not None), default=None),
        }
        for hour, group in sorted(hours.items())
    ]


def _calls(session: Session, system: str, since: datetime) -> list[tuple[datetime, int]]:
    rows = session.execute(
        select(ApiCallLog.at, ApiCallLog.calls).where(ApiCallLog.system == system, ApiCallLog.at >= since)
    ).all()
    return [(as_utc(at) or since, int(n or 0)) for at, n in rows]


def _marketo(session: Session, buckets: list[datetime]) -> list[dict[str, Any]]:
    """Marketo calls per hour and the running total of each quota day (it resets at its start)."""
    first_day = quota_day_start(buckets[0])
    per_hour = dict.fromkeys(buckets, 0)
    before = 0  # calls of the first quota day sent before the first bucket
    for at, n in _calls(session, "marketo", min(first_day, buckets[0])):
        bucket = _floor(at, HOUR)
        if bucket in per_hour:
            per_hour[bucket] += n
        elif first_day <= at < buckets[0]:
            before += n
    out, running, day = [], before, first_day
    for b in buckets:
        if quota_day_start(b) != day:
            day, running = quota_day_start(b), 0
        running += per_hour[b]
        out.append({"t": b.isoformat(), "calls": per_hour[b], "cumulative": running})
    return out


def _dynamics(session: Session, buckets: list[datetime], step: timedelta) -> list[dict[str, Any]]:
    """Dataverse calls per 5-minute window; with an hourly step, each hour's busiest window."""
    windows: dict[datetime, int] = {}
    for at, n in _calls(session, "dynamics", buckets[0]):
        key = _floor(at, WINDOW)
        windows[key] = windows.get(key, 0) + n
    per_bucket = dict.fromkeys(buckets, 0)
    for start, n in windows.items():
        bucket = _floor(start, step)
        if bucket in per_bucket:
            per_bucket[bucket] = max(per_bucket[bucket], n) if step > WINDOW else n
    return [{"t": b.isoformat(), "calls": n} for b, n in per_bucket.items()]


def chart_series(
    session: Session,
    *,
    usable_budget: int,
    daily_quota: int,
    dynamics_reserve_share: float = 0.2,
    window_limit: int = DYNAMICS_WINDOW_CALLS,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The console's chart data for the last 24 hours and the last 7 days.

    Args:
        session: Open state-store session.
        usable_budget: Marketo calls the sync may send per quota day (quota minus reserve).
        daily_quota: The instance's Marketo daily quota.
        dynamics_reserve_share: Share of the Dataverse window kept for other integrations.
        window_limit: Dataverse requests allowed per user and 5-minute window.
        now: Current time (tests).

    Returns:
        ``{"ranges": {"24h": ..., "7d": ...}, "marketo_usable", "marketo_daily_quota",
        "dynamics_window_limit", "dynamics_window_share"}``. Each range has ``start``, ``end``,
        ``synced`` (per hour: ``t``, ``loaded``, ``failed``), ``latency`` (per run with a latency:
        ``t``, ``run_id``, ``entity``, ``direction``, ``runs``, ``p50``, ``p95``, ``max``), ``marketo``
        (per hour: ``t``, ``calls``, ``cumulative`` since its quota day began), ``dynamics``
        (``t``, ``calls``: per 5-minute window over 24 hours, the busiest window of each hour
        over 7 days) and ``dynamics_step_seconds``. With more than :data:`LATENCY_POINTS` runs in
        a range, ``latency`` has one point per hour instead (``runs``: how many; ``p50``: their
        median p50; ``p95``, ``max``: the highest).

    Raises:
        ValueError: A negative budget or limit, or a reserve share outside [0, 1).
    """
    if usable_budget < 0 or daily_quota < 0 or window_limit < 1:
        raise ValueError(
            f"chart limits must not be negative: usable {usable_budget}, quota {daily_quota}, "
            f"window {window_limit}"
        )
    if not 0.0 <= dynamics_reserve_share < 1.0:
        raise ValueError(f"Dataverse window reserve share must be in [0, 1), not {dynamics_reserve_share}")
    when = as_utc(now) or utcnow()
    ranges: dict[str, Any] = {}
    for name, span in RANGES.items():
        hours = _buckets(when, span, HOUR)
        dyn_step = WINDOW if span <= timedelta(days=1) else HOUR
        ranges[name] = {
            "start": hours[0].isoformat(),
            "end": (hours[-1] + HOUR).isoformat(),
            "synced": _synced(session, hours, HOUR),
            "latency": _latency(session, hours[0]),
            "marketo": _marketo(session, hours),
            "dynamics": _dynamics(session, _buckets(when, span, dyn_step), dyn_step),
            "dynamics_step_seconds": int(dyn_step.total_seconds()),
        }
    return {
        "ranges": ranges,
        "marketo_usable": int(usable_budget),
        "marketo_daily_quota": int(daily_quota),
        "dynamics_window_limit": int(window_limit),
        "dynamics_window_share": dynamics_window_calls(window_limit, dynamics_reserve_share),
    }
