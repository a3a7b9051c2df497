"""Quota budgeting: a run estimates its API calls before it writes and stays out of the reserve.

Marketo counts every REST call against one daily quota per instance (50,000 by default),
shared by every integration and reset at midnight US Central time. The sync keeps a share of
it (``reserve_share``, default 0.2) for the others and may spend only the rest:

    reserve = ceil(daily_quota × reserve_share),  usable = daily_quota − reserve,
    left    = usable − calls the sync sent today (table ``api_call_log``, Marketo rows).

Each run is checked twice:

* ``preflight`` (before the extract reads anything): nothing left → the run stops;
* ``guard`` (after the transform, before the load): the load's calls are known exactly from
  the staged plans (one call per 300 Marketo records per operation kind and batch, one
  ``$batch`` request per 100 Dataverse records). A run that does not fit in ``left`` fails
  with a message giving the figures (an alert: the sync is out of budget for today). A
  ``low``-priority entity is *deferred* (its run skips the load and commit; the watermark
  stays, so the next run picks the same changes up) when running it would leave less than
  ``low_priority_headroom`` of the usable budget for the other entities.

Deferring is a skip, not a failure: it is the budget working as configured. Stopping is a
failure because even a normal entity cannot sync: somebody should know before tomorrow.
Dataverse has no daily quota but a rolling window per user (6,000 requests / 5 minutes); its
share is kept by lowering the calls the shared limiter lets the sync make per window
(:func:`dynamics_window_calls`).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from crm_sync.config import QuotaPriority
from crm_sync.guards import GuardError, GuardSettings
from crm_sync.ops import DYNAMICS_OPS, MARKETO_OPS, SINGLE_RECORD_OPS
from crm_sync.state.guards import calls_since

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from sqlalchemy.orm import Session

    from crm_sync.config import EntityConfig

log = logging.getLogger(__name__)

QUOTA_TZ = ZoneInfo("America/Chicago")  # Marketo's daily quota resets at midnight US Central
MARKETO_CALL_RECORDS = 300  # records per Marketo write call
DYNAMICS_BATCH_RECORDS = 1000  # operations per Dataverse $batch: the load sends one per batch, up to 1,000
DYNAMICS_WINDOW_CALLS = 6000  # Dataverse service protection: requests per user per 5 minutes


class QuotaExceededError(GuardError):
    """The run's calls do not fit in what is left of the sync's share of the daily quota."""


class QuotaDeferred(GuardError):
    """A low-priority entity's run is put off to keep budget for the others."""


def quota_day_start(now: datetime) -> datetime:
    """Start (UTC) of the Marketo quota day that ``now`` falls in (midnight US Central)."""
    local = now.astimezone(QUOTA_TZ)
    midnight = datetime(local.year, local.month, local.day, tzinfo=QUOTA_TZ)
    return midnight.astimezone(UTC)


def quota_status(
    session: Session, *, now: datetime, daily_quota: int, reserve_share: float
) -> dict[str, Any]:
    """Today's Marketo quota figures of the sync.

    Args:
        session: State-store session.
        now: Current time (aware).
        daily_quota: The instance's daily quota (Variable ``mds_marketo_daily_quota``).
        reserve_share: Share kept for other integrations (Variable ``mds_quota_reserve_share``).

    Returns:
        ``day`` (US Central date), ``resets_at`` (UTC ISO time), ``daily_quota``, ``reserve``,
        ``usable``, ``used_today`` (Marketo calls the sync sent since midnight US Central),
        ``left`` (usable minus used, never negative), ``used_by_entity``.
    """
    start = quota_day_start(now)
    by_entity = calls_since(session, "marketo", start)
    used = sum(by_entity.values())
    reserve = math.ceil(daily_quota * reserve_share)
    usable = max(daily_quota - reserve, 0)
    next_midnight = (start.astimezone(QUOTA_TZ) + timedelta(days=1, hours=2)).replace(hour=0)
    return {
        "day": start.astimezone(QUOTA_TZ).date().isoformat(),
        "resets_at": next_midnight.astimezone(UTC).isoformat(),
        "daily_quota": daily_quota,
        "reserve_share": reserve_share,
        "reserve": reserve,
        "usable": usable,
        "used_today": used,
        "left": max(usable - used, 0),
        "used_by_entity": by_entity,
    }


def estimate_load_calls(op_counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """API calls the load will send, from the operation counts of each staged batch.

    Args:
        op_counts: One ``{operation: records}`` mapping per load batch.

    Returns:
        ``{"marketo": n, "dynamics": m}``.
    """
    marketo = dynamics = 0
    for counts in op_counts:
        for op, n in counts.items():
            if n <= 0:
                continue
            if op in SINGLE_RECORD_OPS:
                marketo += n
            elif op in MARKETO_OPS:
                marketo += math.ceil(n / MARKETO_CALL_RECORDS)
            elif op in DYNAMICS_OPS:
                dynamics += math.ceil(n / DYNAMICS_BATCH_RECORDS)
            else:
                raise ValueError(f"unknown staged operation {op!r}")
    return {"marketo": marketo, "dynamics": dynamics}


def _figures(status: Mapping[str, Any]) -> str:
    return (
        f"{status['used_today']} of the {status['usable']} usable calls spent today "
        f"(daily quota {status['daily_quota']}, reserve {status['reserve']} kept for other "
        f"integrations), {status['left']} left until {status['resets_at']}"
    )


def check_preflight(entity: EntityConfig, status: Mapping[str, Any]) -> None:
    """Stop an entity that reads or writes Marketo when nothing is left of today's budget.

    Raises:
        QuotaExceededError: ``left`` is 0.
    """
    if status["left"] <= 0:
        raise QuotaExceededError(
            f"{entity.name}: Marketo API budget spent for today: {_figures(status)}; "
            "the run stopped before reading anything"
        )


def check_budget(
    entity: EntityConfig, estimate: Mapping[str, int], status: Mapping[str, Any], settings: GuardSettings
) -> dict[str, Any]:
    """Decide whether the run's load fits the budget.

    Args:
        entity: The entity (its ``quota_priority``).
        estimate: The load's calls (:func:`estimate_load_calls`).
        status: :func:`quota_status` now.
        settings: The budget settings.

    Returns:
        ``{"estimate": ..., "left_after": n}`` when the run may load.

    Raises:
        QuotaExceededError: The Marketo calls do not fit in ``left``.
        QuotaDeferred: A low-priority entity would leave less than the headroom.
    """
    need = int(estimate.get("marketo", 0))
    left = int(status["left"])
    if need > left:
        raise QuotaExceededError(
            f"{entity.name}: the load needs {need} Marketo calls but only {left} are left: "
            f"{_figures(status)}; the run stopped before any write (its changes stay pending)"
        )
    headroom = math.ceil(int(status["usable"]) * settings.low_priority_headroom)
    if need and entity.quota_priority == QuotaPriority.LOW and left - need < headroom:
        raise QuotaDeferred(
            f"{entity.name}: low-priority entity deferred: its load needs {need} Marketo calls and "
            f"would leave {left - need}, under the {headroom} kept for higher-priority entities; "
            f"{_figures(status)}. Its changes stay pending for a later run"
        )
    return {"estimate": dict(estimate), "left_after": left - need}


def dynamics_window_calls(window_calls: int, reserve_share: float) -> int:
    """Requests per window the sync may use when ``reserve_share`` of the window is kept for others."""
    return max(1, math.floor(window_calls * (1.0 - reserve_share)))


def check_low_priority(
    name: str, need: int, status: Mapping[str, Any], settings: GuardSettings
) -> dict[str, Any]:
    """Defer a low-priority sync (activities, program membership) that would starve the others.

    Unlike :func:`check_budget`, a low-priority run is never an alert: it is deferred both when
    its calls do not fit in what is left and when they would leave less than the
    ``low_priority_headroom`` share of the usable budget for the entity DAGs.

    Args:
        name: What is deferred, for the message.
        need: Marketo calls the run needs at the least before it can move anything.
        status: :func:`quota_status` now.
        settings: The budget settings.

    Returns:
        ``{"need": n, "left_after": m, "headroom": h}`` when the run may go on.

    Raises:
        QuotaDeferred: The run would eat into the calls kept for higher-priority syncs.
    """
    left = int(status["left"])
    headroom = math.ceil(int(status["usable"]) * settings.low_priority_headroom)
    if need > 0 and left - need < headroom:  # a run with nothing to spend is never deferred
        raise QuotaDeferred(
            f"{name}: low-priority sync deferred: it needs at least {need} Marketo calls and would "
            f"leave {left - need}, under the {headroom} kept for the entity syncs; {_figures(status)}. "
            "Nothing was read; the next run starts where this one would have"
        )
    return {"need": need, "left_after": left - need, "headroom": headroom}
