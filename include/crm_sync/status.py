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
- **record errors**: unresolved rows of the record-error table (retrying or parked), found with
  one :class:`ErrorFilter` (search text, entity, direction, field, code, state) that the page,
  the CSV export and the re-queue action share, so a re-queue touches exactly the rows shown.

The backlog, today's calls and the chart series are in :mod:`crm_sync.status_charts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update

from crm_sync.state.db import as_utc, utcnow
from crm_sync.state.models import RecordError, RunLedger, Watermark

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from sqlalchemy.orm import Session

DEFAULT_DAILY_QUOTA = 50_000  # Variable mds_marketo_daily_quota, as the sync DAGs read it
DEFAULT_RESERVE_SHARE = 0.2  # Variable mds_quota_reserve_share
ERROR_LIST_LIMIT = 500
DIRECTIONS = ("d2m", "m2d")
_KNOWN_DIRECTIONS = {"both", *DIRECTIONS}
# The marketing syncs of issue 20 and the names they use in the state store (ledger, call log,
# record errors): they draw from the same Marketo budget, so the page lists them beside the entities.
MARKETING_SYNCS = {"activity": "m2d", "program_membership": "both"}
ERROR_STATES = ("parked", "retrying")
SEARCH_MAX = 200


def _covered(direction: str) -> tuple[str, ...]:
    """The one-way directions a ledger/config direction covers (``both`` covers d2m and m2d)."""
    return DIRECTIONS if direction == "both" else (direction,)


def iso_utc(value: datetime | None) -> str | None:
    """``value`` as ISO text in UTC (None stays None); naive values from SQLite are UTC."""
    aware = as_utc(value)
    return aware.isoformat() if aware else None


def _ledger_time(row: Any) -> datetime:
    return as_utc(row.ended_at) or as_utc(row.started_at) or utcnow()


def blank_row(entity: str, direction: str, *, configured: bool = True) -> dict[str, Any]:
    """The row of an entity and direction that has no runs, watermarks or errors yet."""
    return {
        "entity": entity,
        "direction": direction,
        "kind": "marketing" if entity in MARKETING_SYNCS else "entity",
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
        "deferred_last_day": 0,
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
        ``failed_last_day``, ``deferred_last_day`` (runs the budget put off), ``errors_retrying``,
        ``errors_parked`` and ``kind`` (``marketing`` for :data:`MARKETING_SYNCS`, else
        ``entity``); sorted by entity.

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
        r["last_run_status"], r["last_run_at"] = rec.status, iso_utc(at)
        if rec.status == "success":
            r["last_success_at"], r["last_success_run_id"] = iso_utc(at), rec.run_id
        if rec.ended_at is not None and at >= day_ago:
            r["deferred_last_day"] += int(rec.status == "deferred")
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
        mark = {"direction": wm.direction, "updated_at": iso_utc(updated), "lag_seconds": lag}
        r["watermarks"].append(mark)
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


@dataclass(frozen=True)
class ErrorFilter:
    """Which unresolved record errors to list, export or re-queue; blank fields match everything.

    Attributes:
        search: Text found (case-insensitive) in the record id or the message.
        entity: Only this entity's errors.
        direction: Only this direction's (``d2m`` or ``m2d``).
        field: Only errors of this field.
        code: Only errors with this reason code.
        state: ``parked`` or ``retrying`` only.
        source_id: Only this record's errors (the re-queue button of one row).

    Raises:
        ValueError: An unknown direction or state, a search text over 200 characters, or a record
            id without its entity.
    """

    search: str = ""
    entity: str = ""
    direction: str = ""
    field: str = ""
    code: str = ""
    state: str = ""
    source_id: str = ""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            object.__setattr__(self, name, (value or "").strip())
        if self.direction and self.direction not in DIRECTIONS:
            raise ValueError(f"error filter: direction {self.direction!r} is not one of {list(DIRECTIONS)}")
        if self.state and self.state not in ERROR_STATES:
            raise ValueError(f"error filter: state {self.state!r} is not one of {list(ERROR_STATES)}")
        if len(self.search) > SEARCH_MAX:
            raise ValueError(f"error filter: search text is longer than {SEARCH_MAX} characters")
        if self.source_id and not self.entity:
            raise ValueError("error filter: a record id needs its entity")

    def params(self) -> dict[str, str]:
        """The filter's set fields, for a query string or hidden form fields."""
        return {k: v for k, v in asdict(self).items() if v}

    def conditions(self) -> list[Any]:
        """SQL conditions on :class:`~crm_sync.state.models.RecordError` (unresolved rows only)."""
        conds: list[Any] = [RecordError.resolved_at.is_(None)]
        for name in ("entity", "direction", "field", "code", "source_id"):
            if getattr(self, name):
                conds.append(getattr(RecordError, name) == getattr(self, name))
        if self.state:
            conds.append(RecordError.parked.is_(self.state == "parked"))
        if self.search:
            needle = self.search.lower()
            conds.append(
                or_(
                    func.lower(RecordError.source_id).contains(needle, autoescape=True),
                    func.lower(RecordError.message).contains(needle, autoescape=True),
                )
            )
        return conds


def _error_dict(e: RecordError) -> dict[str, Any]:
    return {
        "id": e.id,
        "entity": e.entity,
        "direction": e.direction,
        "source_id": e.source_id,
        "field": e.field,
        "code": e.code,
        "message": e.message,
        "attempts": e.attempts,
        "first_seen": iso_utc(e.first_seen),
        "last_seen": iso_utc(e.last_seen),
        "next_attempt_at": iso_utc(e.next_attempt_at),
        "parked": bool(e.parked),
    }


def _ordered(flt: ErrorFilter) -> Any:
    return (
        select(RecordError)
        .where(*flt.conditions())
        .order_by(RecordError.parked.desc(), RecordError.last_seen.desc(), RecordError.id.desc())
    )


def error_list(
    session: Session,
    *,
    entity: str | None = None,
    flt: ErrorFilter | None = None,
    limit: int = ERROR_LIST_LIMIT,
) -> tuple[list[dict[str, Any]], int]:
    """Unresolved record errors matching ``flt`` (or of ``entity``), parked first, newest first.

    Returns:
        ``(rows, total)``: at most ``limit`` dicts (``id``, ``entity``, ``direction``,
        ``source_id``, ``field``, ``code``, ``message``, ``attempts``, ``first_seen``,
        ``last_seen``, ``next_attempt_at``, ``parked``) and the number of errors that match.
    """
    flt = flt or ErrorFilter(entity=entity or "")
    total = session.execute(
        select(func.count()).select_from(RecordError).where(*flt.conditions())
    ).scalar_one()
    rows = [_error_dict(e) for e in session.execute(_ordered(flt).limit(limit)).scalars()]
    return rows, int(total)


def iter_errors(session: Session, flt: ErrorFilter, *, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every error matching ``flt``, in :func:`error_list`'s order, fetched ``batch`` rows at a time."""
    result = session.execute(_ordered(flt).execution_options(yield_per=batch))
    for e in result.scalars():
        yield _error_dict(e)


def error_facets(session: Session) -> dict[str, list[str]]:
    """The entities, fields and codes of the unresolved errors (the filter form's choices)."""
    open_ = RecordError.resolved_at.is_(None)
    out = {}
    for name, column in (
        ("entities", RecordError.entity),
        ("fields", RecordError.field),
        ("codes", RecordError.code),
    ):
        values = session.execute(select(column).where(open_).distinct()).scalars()
        out[name] = sorted({str(v) for v in values if v})
    return out


def requeue_matching(
    session: Session,
    flt: ErrorFilter,
    *,
    known_entities: Iterable[str] | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """Re-queue exactly the unresolved errors ``flt`` matches: the next run of their DAG retries them.

    A parked error is un-parked with a fresh attempt count (as
    :func:`crm_sync.state.errors.requeue_errors` does); a
    retrying one keeps its attempts and only has its backoff cut short (due now). Both updates
    carry the filter's own conditions, so nothing outside the filtered set changes.

    Args:
        session: Open session (the caller commits).
        flt: The filter the page shows.
        known_entities: When given, the filter's entity must be one of them.
        now: Current time (tests).

    Returns:
        ``{"parked": n, "retrying": m}``: rows re-queued of each kind.

    Raises:
        ValueError: The filter names an entity that is not known.
    """
    if flt.entity and known_entities is not None and flt.entity not in set(known_entities):
        raise ValueError(f"entity {flt.entity!r} is not a configured entity")
    when = as_utc(now) or utcnow()
    conds = flt.conditions()
    counts = {}
    # Retrying rows first: the parked rows this call un-parks must not be counted twice.
    for kind, values in (
        ("retrying", {"next_attempt_at": when}),
        ("parked", {"parked": False, "attempts": 0, "next_attempt_at": when}),
    ):
        if flt.state and flt.state != kind:
            counts[kind] = 0
            continue
        stmt = update(RecordError).where(*conds, RecordError.parked.is_(kind == "parked")).values(**values)
        result = session.execute(stmt.execution_options(synchronize_session=False))
        counts[kind] = int(getattr(result, "rowcount", 0) or 0)
    return counts


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
