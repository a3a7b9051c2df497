"""Visibility guard: stop before writing when Dataverse suddenly shows far fewer rows.

Dataverse answers a narrowed security role (the application user moved to one business unit,
a privilege taken away) with fewer rows, not with an error. A run that reads a whole table and
treats the records it no longer sees as deleted (the sandbox-refresh re-link, the re-read after
an expired delta token) would then delete or flag data in Marketo that still exists. Before
such a run writes, the rows it saw are compared with what the last full read of the table saw
(``visible_rows`` in the state store; before the first one, the records the sync links):

    collapsed when  last - seen >= min_rows  and  seen < last * (1 - tolerance)

``tolerance`` is the Variable ``mds_visibility_tolerance`` (default 0.5: half the rows gone at
once); ``min_rows`` (10) keeps small tables from tripping it. A collapse fails the task with an
alert naming the entity and both counts; nothing is written. When the new counts are right
(the org really lost those rows, or a sandbox was refreshed from a smaller copy), the
``rebaseline`` DAG's Param ``accept_row_counts`` lets the run go on and records them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crm_sync.guards import GuardError
from crm_sync.guards.deletes import linked_records
from crm_sync.state.guards import VisibleRows, last_visible_rows, record_visible_rows

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.5
DEFAULT_MIN_ROWS = 10
DEFAULT_PROBE_MINUTES = 60


class VisibilityCollapsed(GuardError):
    """The application user sees far fewer rows than the last full read did."""


def expected_rows(session: Session, entity: str, last: int | None = None) -> int | None:
    """What the last full read saw (``last``, else the stored count), else the records the sync
    links; None when neither is known."""
    if last is None:
        last = last_visible_rows(session, entity)
    if last is not None:
        return last
    linked = linked_records(session, entity)
    return linked or None


def check_visibility(
    entity: str,
    seen: int,
    expected: int | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    min_rows: int = DEFAULT_MIN_ROWS,
    accepted: bool = False,
) -> dict[str, Any]:
    """Raise when ``seen`` fell too far below ``expected``, unless the user accepted the counts.

    Returns:
        ``entity``, ``seen``, ``expected``, ``tolerance``, ``accepted``.

    Raises:
        VisibilityCollapsed: Naming the entity, both counts and what to do.
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"mds_visibility_tolerance must be in (0, 1), got {tolerance}")
    figures = {
        "entity": entity,
        "seen": seen,
        "expected": expected,
        "tolerance": tolerance,
        "accepted": accepted,
    }
    if expected is None:
        return figures
    collapsed = expected - seen >= max(min_rows, 1) and seen < expected * (1 - tolerance)
    if collapsed and not accepted:
        raise VisibilityCollapsed(
            f"{entity}: the Dynamics application user sees {seen} rows, the last full read saw "
            f"{expected} (more than {tolerance:.0%} gone at once). A narrowed security role or a "
            "lost privilege hides rows without an error, so nothing was written or deleted. Check "
            "the application user's roles; if the new count is right, re-run with the Param "
            "accept_row_counts=true"
        )
    if collapsed:
        log.warning("%s: %d rows visible instead of %d, accepted by the user", entity, seen, expected)
    return figures


def tolerance_setting() -> float:
    """The Variable ``mds_visibility_tolerance``; the default where no Variable can be read."""
    from crm_sync.guards.variables import number_variable

    try:
        return float(number_variable("mds_visibility_tolerance", float, DEFAULT_TOLERANCE))
    except ValueError:
        raise
    except Exception:  # outside a task (CLI, unit test) there may be no Variable backend
        return DEFAULT_TOLERANCE


def guard_full_read(
    session: Session,
    entity: str,
    seen: int,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    accepted: bool = False,
) -> dict[str, Any]:
    """:func:`check_visibility` against the stored count, then store ``seen`` (when it passed)."""
    figures = check_visibility(
        entity, seen, expected_rows(session, entity), tolerance=tolerance, accepted=accepted
    )
    record_visible_rows(session, entity, seen)
    return figures


def probe_visibility(
    session: Session,
    entity: str,
    count: Callable[[], int],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    every_minutes: float = DEFAULT_PROBE_MINUTES,
    accepted: bool = False,
) -> dict[str, Any] | None:
    """The incremental runs' check: a ``$count`` of the table at most every ``every_minutes``.

    Dataverse counts up to ``COUNT_CAP`` rows (:mod:`crm_sync_hooks.dynamics`), so both sides are
    compared up to it: a table of 100,000 rows that collapses is seen once fewer than
    ``COUNT_CAP * (1 - tolerance)`` rows stay visible; the exact comparison is the full reads'
    (:func:`guard_full_read`). An exact count is stored; a capped one never replaces a larger
    stored count.

    Returns:
        The figures (:func:`check_visibility`), or None when no check was due or nothing is
        known to compare with.
    """
    from datetime import timedelta

    from crm_sync.state import utcnow
    from crm_sync.state.db import as_utc
    from crm_sync_hooks.dynamics import COUNT_CAP

    row = session.get(VisibleRows, entity)
    if row is not None and (as_utc(row.counted_at) or utcnow()) > utcnow() - timedelta(minutes=every_minutes):
        return None
    expected = expected_rows(session, entity, None if row is None else int(row.rows))
    if expected is None:
        return None
    seen = int(count())
    figures = check_visibility(
        entity,
        min(seen, COUNT_CAP),
        min(expected, COUNT_CAP),
        tolerance=tolerance,
        accepted=accepted,
    )
    record_visible_rows(session, entity, max(seen, expected) if seen >= COUNT_CAP else seen)
    return {**figures, "seen": seen, "expected": expected}
