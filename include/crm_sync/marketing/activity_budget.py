"""Budget checks of an activity sync run: the Marketo call budget (low priority) and the daily
bulk export volume, each deferring the run (ledger status ``deferred``) before it spends a call.

Marketo counts export volume per instance and quota day (500 MB by default, reset at midnight US
Central). The bytes this sync's activity exports downloaded are kept per quota day in the staging
area (``feeds/activity-export-volume/<day>.json``, shared by every worker like the staged
batches), so every run knows what is left; other exports of the instance (the full copy's lead
exports, other tools) are not counted, and Marketo's own refusal (1029) still stops a job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_sync.guards.quota import QuotaDeferred, check_low_priority, quota_day_start, quota_status
from crm_sync.marketing.activities import DIRECTION, ENTITY
from crm_sync.state import RunCounts, session_scope, utcnow, write_ledger
from crm_sync.state.guards import run_api_calls

if TYPE_CHECKING:
    from datetime import datetime

    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.context import RunContext
    from crm_sync.guards import GuardSettings

EXPORT_VOLUME = "activity-export-volume"  # staging folder of the bytes exported per quota day


def write_stop_ledger(ctx: RunContext, status: str) -> None:
    """The ledger row of a run stopped before it read anything (``deferred``), with its calls."""
    now = utcnow()
    with session_scope(ctx.state) as session:
        calls = sum(run_api_calls(session, ctx.run_id, ENTITY).values())
        write_ledger(
            session,
            RunCounts(ctx.run_id, ENTITY, DIRECTION, status, api_calls=calls, started_at=now, ended_at=now),
        )


def check_budget(ctx: RunContext, guards: GuardSettings, need: int) -> dict[str, Any]:
    """Defer the run (ledger status ``deferred``) when it would eat into the entity syncs' budget.

    Raises:
        QuotaDeferred: Too little of today's Marketo budget is left for a low-priority sync.
    """
    with session_scope(ctx.state) as session:
        status = quota_status(
            session, now=utcnow(), daily_quota=guards.daily_quota, reserve_share=guards.reserve_share
        )
    try:
        budget = check_low_priority("activities", need, status, guards)
    except QuotaDeferred:
        write_stop_ledger(ctx, "deferred")
        raise
    return {**budget, "left": status["left"], "used_today": status["used_today"]}


# --- export volume -------------------------------------------------------------------------
def _volume_folder(ctx: RunContext) -> ObjectStoragePath:
    return ctx.staging.root / "feeds" / EXPORT_VOLUME


def export_volume_today(ctx: RunContext, now: datetime) -> tuple[str, int]:
    """(quota day, bytes of activity exports this sync downloaded that day)."""
    day = quota_day_start(now).date().isoformat()
    data = ctx.staging.read_json(_volume_folder(ctx), day) or {}
    return day, int(data.get("bytes", 0))


def add_export_volume(ctx: RunContext, day: str, size: int) -> int:
    """Add ``size`` bytes to the day's export volume; returns the day's total."""
    data = ctx.staging.read_json(_volume_folder(ctx), day) or {}
    total = int(data.get("bytes", 0)) + size
    ctx.staging.write_json(_volume_folder(ctx), day, {"day": day, "bytes": total})
    return total


def check_export_volume(ctx: RunContext, now: datetime, limit_mb: float) -> tuple[str, int]:
    """Defer when today's export volume is spent (Marketo's 500 MB a day by default).

    Raises:
        QuotaDeferred: The sync's activity exports reached ``limit_mb`` today.
    """
    day, used = export_volume_today(ctx, now)
    if used >= limit_mb * 1024 * 1024:
        write_stop_ledger(ctx, "deferred")
        raise QuotaDeferred(
            f"activities: {used / 1048576:.1f} MB of the {limit_mb:g} MB daily bulk export volume "
            f"used on {day} (US Central); the export waits for the next quota day"
        )
    return day, used
