"""The stages of an activity sync run: budget, read, plan, load, commit.

``extract`` reads new activities (the activity feed from the stored paging token, or the bulk
export of one data interval), adds the activities still waiting for their person, maps them
(:mod:`crm_sync.marketing.activities`) and stages the upsert rows as Parquet batches of at most
1,000 (one ``$batch`` each); ``load`` writes one staged batch; ``commit`` advances the feed's
watermark (only once every batch is loaded) and writes the run ledger. A retried load re-reads
its staged batch; writes are upserts by the Marketo activity id, so a re-run adds no rows.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from crm_sync.marketing.activities import (
    DIRECTION,
    ENTITY,
    INVALID,
    WAITING,
    PersonTable,
    empty_activities,
    from_export,
    from_feed,
    person_targets,
    to_timeline_rows,
    upsert_records,
)
from crm_sync.marketing.activity_budget import add_export_volume, check_export_volume
from crm_sync.marketing.activity_config import resolve_types
from crm_sync.state import (
    RunCounts,
    get_watermark,
    lookup_links,
    open_errors,
    park_errors,
    record_errors,
    resolve_errors,
    session_scope,
    set_watermark,
    utcnow,
    write_ledger,
)
from crm_sync.state.guards import run_api_calls

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.context import RunContext
    from crm_sync.marketing.activity_config import ActivityMapping, ActivityType
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

log = logging.getLogger(__name__)

MANIFEST = "extract"
WRITE_FAILED = "WRITE_FAILED"
FEED_CALLS = 2  # the cheapest incremental run: the types read and one feed page
EXPORT_CALLS = 5  # the cheapest history run: the types read, then create, enqueue, status, file


@dataclass(frozen=True)
class Window:
    """The data interval of a history run (activity dates in ``[start, end)``)."""

    start: datetime
    end: datetime


def _folder(ctx: RunContext) -> ObjectStoragePath:
    return ctx.staging.run_dir(ENTITY, ctx.run_id)


# --- reading ---------------------------------------------------------------------------------
def read_feed(
    marketo: MarketoHook, token: str, type_ids: list[int], batch_size: int = 300
) -> tuple[pd.DataFrame, str, int]:
    """Every activity of the mapped types after ``token``: (activities, the newest token, pages)."""
    records: list[dict[str, Any]] = []
    pages = 0
    for page in marketo.get_activities(token, type_ids, batch_size=batch_size):
        records.extend(page.records)
        token = page.next_page_token
        pages += 1
    return from_feed(records), token, pages


def read_export(
    marketo: MarketoHook, window: Window, type_ids: list[int], **job: Any
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The activities of the mapped types created in ``window``, through the bulk export."""
    with tempfile.TemporaryDirectory(prefix="mds-activities-") as tmp:
        dest = Path(tmp) / "activities.csv"
        exported = marketo.export_activities(
            window.start, window.end, dest, activity_type_ids=type_ids, workdir=Path(tmp), **job
        )
        size = dest.stat().st_size if dest.exists() else 0
        frame = from_export(dest) if exported.rows else empty_activities()
    return frame, {"export_ids": exported.export_ids, "rows": exported.rows, "bytes": size}


def _read_staged(ctx: RunContext, url: str) -> pd.DataFrame | None:
    path = ctx.staging.path(url)
    if not path.exists():
        return None
    with path.open("rb") as fh:
        return pd.read_parquet(fh)


def waiting_activities(ctx: RunContext, now: datetime) -> tuple[pd.DataFrame, set[str]]:
    """Activities with an open record error, re-read from the staged files the errors point at.

    Returns:
        The activities to try again (those waiting for their person every run: the check is a
        state-store lookup; failed writes when their backoff is over) and the ids among them
        whose backoff is not over (their error is not counted as a new attempt).
    """
    with session_scope(ctx.state) as session:
        errors = open_errors(session, entity=ENTITY)
    errors = errors[~errors["parked"].astype(bool) & errors["payload_ref"].notna()]
    if errors.empty:
        return empty_activities(), set()
    due = errors["next_attempt_at"].isna() | (errors["next_attempt_at"] <= now)
    errors = errors[(errors["code"] == WAITING) | due]
    not_due = set(errors.loc[~due.loc[errors.index], "source_id"].astype(str))
    frames = []
    for ref, part in errors.groupby("payload_ref"):
        staged = _read_staged(ctx, str(ref))
        if staged is None:
            log.warning("activities: staged file %s of %d waiting activities is gone", ref, len(part))
            continue
        frames.append(staged[staged["activity_id"].astype(str).isin(set(part["source_id"].astype(str)))])
    if not frames:
        return empty_activities(), set()
    return pd.concat(frames, ignore_index=True).drop_duplicates("activity_id", keep="last"), not_due


# --- plan ----------------------------------------------------------------------------------
def plan_activities(
    ctx: RunContext,
    mapping: ActivityMapping,
    types: dict[int, ActivityType],
    persons: list[PersonTable],
    new: pd.DataFrame,
    *,
    retried: pd.DataFrame,
    not_due: set[str],
) -> dict[str, Any]:
    """Map the run's activities, record the waiting and malformed ones, stage the upsert batches.

    Returns:
        ``batches`` (references of the staged row batches), ``activities`` (the staged
        activities file the record errors point at) and counts.
    """
    folder = _folder(ctx)
    fresh = set(new["activity_id"].astype(str))
    retried = retried[~retried["activity_id"].astype(str).isin(fresh)]
    activities = pd.concat([new, retried], ignore_index=True) if len(retried) else new
    staged = ctx.staging.write_frame(folder, "activities", activities.astype(object))
    lead_ids = sorted({str(v) for v in activities["lead_id"].dropna()})
    with session_scope(ctx.state) as session:
        links = lookup_links(session, [p.entity for p in persons], marketo_ids=lead_ids)
        timeline = to_timeline_rows(activities, types, person_targets(links, persons), mapping)
        errors = timeline.errors
        errors = errors[(errors["code"] != WAITING) | ~errors["record_id"].isin(not_due)]
        if not errors.empty:
            record_errors(session, errors.assign(payload_ref=staged.path), run_id=ctx.run_id)
        invalid = errors.loc[errors["code"] == INVALID, "record_id"]
        if len(invalid):
            park_errors(session, ENTITY, DIRECTION, invalid)  # a retry cannot mend the source data
    batches = []
    size = mapping.batch_size
    for number, start in enumerate(range(0, len(timeline.rows), size)):
        chunk = timeline.rows.iloc[start : start + size]
        batches.append(
            {
                "name": f"rows-{number:05d}",
                **ctx.staging.write_frame(folder, f"rows-{number:05d}", chunk).to_dict(),
            }
        )
    waiting = int((timeline.errors["code"] == WAITING).sum())
    counts = {
        "read": len(new),
        "retried": len(retried),
        "rows": len(timeline.rows),
        "waiting": waiting,
        "invalid": len(invalid),
    }
    log.info("activities planned: %s in %d batches", counts, len(batches))
    return {"batches": batches, "activities": staged.path, "counts": counts}


def extract(
    ctx: RunContext,
    marketo: MarketoHook,
    mapping: ActivityMapping,
    persons: list[PersonTable],
    *,
    window: Window | None = None,
    export_job: dict[str, Any] | None = None,
    export_limit_mb: float = 500.0,
) -> dict[str, Any]:
    """Read, map and stage one run's activities (the feed; with ``window``, the bulk export).

    Returns:
        The run's manifest (also staged as ``extract.json``): ``mode``, tokens or the export's
        figures, the batch references and counts.
    """
    started = utcnow()
    manifest: dict[str, Any] = {"started_at": started.isoformat(), "mode": "history" if window else "feed"}
    types = resolve_types(mapping, marketo.get_activity_types())
    type_ids = sorted(types)
    if window is None:
        with session_scope(ctx.state) as session:
            token = get_watermark(session, ENTITY, DIRECTION)
        if token is None:
            since = started - timedelta(hours=mapping.initial_lookback_hours)
            token = marketo.get_paging_token(since)
            log.info("activities: no watermark yet; reading the feed from %s", since.isoformat())
        new, end_token, pages = read_feed(marketo, token, type_ids)
        manifest.update(start_token=token, end_token=end_token, pages=pages)
    else:
        day, _ = check_export_volume(ctx, started, export_limit_mb)
        new, export = read_export(marketo, window, type_ids, **(export_job or {}))
        total = add_export_volume(ctx, day, int(export["bytes"]))
        log.info(
            "activity export %s..%s: %d activities, %.2f MB; %.2f of %g MB of the daily export volume "
            "used on %s",
            window.start.isoformat(),
            window.end.isoformat(),
            export["rows"],
            export["bytes"] / 1048576,
            total / 1048576,
            export_limit_mb,
            day,
        )
        manifest.update(window=[window.start.isoformat(), window.end.isoformat()], export=export)
    retried, not_due = waiting_activities(ctx, started) if window is None else (empty_activities(), set())
    manifest.update(plan_activities(ctx, mapping, types, persons, new, retried=retried, not_due=not_due))
    ctx.staging.write_json(_folder(ctx), MANIFEST, manifest)
    return manifest


# --- load and commit ---------------------------------------------------------------------------
def load_batch(
    ctx: RunContext, dynamics: DynamicsHook, mapping: ActivityMapping, batch: dict[str, Any]
) -> dict[str, Any]:
    """Upsert one staged batch (one ``$batch`` request); record failures, resolve what landed."""
    table = mapping.dynamics
    rows = ctx.staging.read_frame({"path": batch["path"], "rows": batch["rows"]})
    records = upsert_records(rows)
    results = dynamics.upsert_records(
        table.entity_set, records, [table.key], id_column=table.id_column, batch_size=mapping.batch_size
    )
    ids = [str(r[table.key]) for r in records]
    done = [ids[r.index] for r in results if r.ok]
    failed = [(ids[r.index], r.reason or r.code or "failed") for r in results if not r.ok]
    manifest = ctx.staging.read_json(_folder(ctx), MANIFEST) or {}
    with session_scope(ctx.state) as session:
        resolve_errors(session, ENTITY, DIRECTION, done)
        if failed:
            errors = pd.DataFrame(
                {
                    "entity": ENTITY,
                    "direction": DIRECTION,
                    "record_id": [a for a, _ in failed],
                    "field": "",
                    "code": WRITE_FAILED,
                    "reason": [
                        f"activity {a}: write to {table.entity_set} failed: {why}" for a, why in failed
                    ],
                    "payload_ref": manifest.get("activities"),
                }
            )
            record_errors(session, errors, run_id=ctx.run_id)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    outcome = {
        "batch": batch["name"],
        "rows": len(records),
        "loaded": len(done),
        "failed": len(failed),
        **statuses,
    }
    ctx.staging.write_json(_folder(ctx), f"load-{batch['name']}", outcome)
    return outcome


def commit(ctx: RunContext) -> dict[str, Any]:
    """Advance the feed watermark (a feed run) and write the ledger; every batch must be loaded.

    Raises:
        FileNotFoundError: The run has no manifest, or a batch has no load outcome.
    """
    folder = _folder(ctx)
    manifest = ctx.staging.read_json(folder, MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"activities: run {ctx.run_id} has no staged manifest")
    outcomes = []
    for batch in manifest["batches"]:
        outcome = ctx.staging.read_json(folder, f"load-{batch['name']}")
        if outcome is None:
            raise FileNotFoundError(f"activities: batch {batch['name']} of run {ctx.run_id} was not loaded")
        outcomes.append(outcome)
    counts = manifest["counts"]
    loaded = sum(int(o["loaded"]) for o in outcomes)
    failed = sum(int(o["failed"]) for o in outcomes)
    with session_scope(ctx.state) as session:
        if manifest["mode"] == "feed":
            set_watermark(session, ENTITY, DIRECTION, manifest["end_token"])
        calls = sum(run_api_calls(session, ctx.run_id, ENTITY).values())
        ledger = RunCounts(
            run_id=ctx.run_id,
            entity=ENTITY,
            direction=DIRECTION,
            status="success",
            extracted=int(counts["read"]) + int(counts["retried"]),
            transformed=int(counts["rows"]),
            loaded=loaded,
            skipped=int(counts["waiting"]),
            failed=failed + int(counts["invalid"]),
            api_calls=calls,
            started_at=datetime.fromisoformat(manifest["started_at"]),
            ended_at=utcnow(),
        )
        write_ledger(session, ledger)
    return {**counts, "loaded": loaded, "failed": failed, "api_calls": calls}
