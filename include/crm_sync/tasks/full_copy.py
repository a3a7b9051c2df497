"""Task entry points of the ``full_copy`` DAG: build the hooks and state, call :mod:`full_copy`.

Each returns a small JSON-ready dict (or list) for XCom. Hooks and pandas are imported only when
a task runs, never when the DAG file is parsed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crm_sync.engine.context import RunSettings
from crm_sync.engine.full_copy.scope import CopyScope
from crm_sync.tasks.common import context, entities_in, entity_config, task_session

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from crm_sync.engine.context import RunContext
    from crm_sync.engine.full_copy.scope import Partition
    from crm_sync.engine.full_copy.units import UnitPolicy
    from crm_sync.engine.staging import StagingArea

log = logging.getLogger(__name__)


def _ctx(settings: RunSettings, run_id: str, migrate: bool = False) -> RunContext:
    base = context(
        RunSettings(run_id, settings.state_url, settings.staging_url, settings.entities_dir), migrate
    )
    return base


def prepare(
    settings: RunSettings,
    params: Mapping[str, Any],
    *,
    run_type: str | None,
    interval_start: datetime | None,
    interval_end: datetime | None,
) -> dict[str, Any]:
    """Task ``prepare``: the run's scope from its data interval or Params; the state store migrated."""
    from crm_sync.engine.full_copy.scope import copy_order, scope_for_run

    entities = entities_in(settings.entities_dir)
    scope = scope_for_run(
        params,
        run_type=run_type,
        interval_start=interval_start,
        interval_end=interval_end,
        known_entities=list(entities),
    )
    persons = [n for n, e in entities.items() if e.marketo.person_type and e.writes_dynamics]
    starts_feed = scope.everything and not scope.dry_run and any(scope.includes(n) for n in persons)
    with task_session(settings, marketo=starts_feed, migrate=True) as task:
        if starts_feed:
            from crm_sync.engine.full_copy.extract import start_person_feed

            start_person_feed(task.ctx, task.marketo, person_entities=persons)
    order = [[n for n in tier if scope.includes(n)] for tier in copy_order(entities)]
    log.info(
        "full copy scope: %s, entities in order %s%s",
        "everything" if scope.everything else f"created in [{scope.start}, {scope.end})",
        [t for t in order if t],
        " (dry run: nothing is written to Marketo)" if scope.dry_run else "",
    )
    return scope.to_dict()


def extract(settings: RunSettings, name: str, scope_data: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``<entity>.extract``: open (or continue) the partition's attempt and stage its rows."""
    from crm_sync.engine.full_copy.extract import extract_partition
    from crm_sync.engine.full_copy.scope import open_partition
    from crm_sync.rebaseline import on_identity_mismatch
    from crm_sync.state import IdentityMismatchError, check_identity, session_scope

    scope = CopyScope.from_dict(scope_data)
    if not scope.includes(name):
        return {"not_selected": True}
    entity = entity_config(settings, name)
    base = context(settings)
    staging: StagingArea = base.staging
    partition = open_partition(staging, entity, scope)
    try:
        ctx = _ctx(settings, partition.run_id)
        with task_session(settings, entity=name, stage="extract", dynamics=True, ctx=ctx) as task:
            try:
                with session_scope(ctx.state) as session:
                    check_identity(session, "dynamics", task.dynamics.organization_id())
            except IdentityMismatchError as err:
                # A refreshed sandbox: alert, pause the DAGs, stop without retries (as the sync).
                on_identity_mismatch(
                    entity, settings.run_id, err, dag_id="full_copy", task_id=f"{name}.extract"
                )
            manifest = extract_partition(entity, ctx, task.dynamics, scope)
    finally:
        base.state.dispose()
    return {"partition": partition.to_dict(), "rows": manifest["dynamics"]["rows"]}


def _partition(settings: RunSettings, name: str, scope: CopyScope) -> tuple[Partition, RunContext]:
    from crm_sync.engine.full_copy.scope import current_partition

    entity = entity_config(settings, name)
    base = context(settings)
    base.state.dispose()
    partition = current_partition(base.staging, entity, scope)
    return partition, _ctx(settings, partition.run_id)


def unit_policy() -> UnitPolicy:
    """Load-unit sizes from the Airflow Variables ``mds_full_copy_bulk_threshold``,
    ``mds_full_copy_bulk_file_bytes`` and ``mds_full_copy_sync_unit_records`` (defaults otherwise)."""
    from airflow.sdk import Variable

    from crm_sync.engine.full_copy.units import UnitPolicy

    default = UnitPolicy()

    def number(name: str, fallback: int) -> int:
        value = Variable.get(name, default=None)
        try:
            return int(value) if value not in (None, "") else fallback
        except ValueError:
            raise ValueError(f"Variable {name}={value!r} is not a whole number") from None

    return UnitPolicy(
        bulk_threshold=number("mds_full_copy_bulk_threshold", default.bulk_threshold),
        bulk_file_bytes=min(
            number("mds_full_copy_bulk_file_bytes", default.bulk_file_bytes), default.bulk_file_bytes
        ),
        sync_unit_records=number("mds_full_copy_sync_unit_records", default.sync_unit_records),
    )


def plan(settings: RunSettings, name: str, scope_data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Task ``<entity>.plan``: plan and stage the load units; returns them (none in a dry run)."""
    from crm_sync.engine.contracts import LoadBatch
    from crm_sync.engine.full_copy.units import plan_partition

    scope = CopyScope.from_dict(scope_data)
    if not scope.includes(name):
        return []
    entity = entity_config(settings, name)
    everything = entities_in(settings.entities_dir).values()
    persons = [
        e.name for e in everything if e.marketo.object is entity.marketo.object and e.marketo.person_type
    ]
    _, ctx = _partition(settings, name, scope)
    try:
        manifest = plan_partition(entity, ctx, person_entities=persons or [name], policy=unit_policy())
    finally:
        ctx.state.dispose()
    summary = manifest["summary"]
    if scope.dry_run:
        log.info(
            "DRY RUN %s: would create (or match by email) %d and update %d records in Marketo; "
            "%s; sample of creates %s; sample of updates %s",
            name,
            summary["create_or_match"],
            summary["update"],
            manifest["counts"],
            summary["samples"]["create"],
            summary["samples"]["update"],
        )
        return []
    return [LoadBatch.from_xcom(u).to_xcom() for u in manifest["batches"]]


def load(
    settings: RunSettings, name: str, scope_data: Mapping[str, Any], unit: Mapping[str, Any]
) -> dict[str, Any]:
    """Task ``<entity>.load`` (mapped per unit): write one unit unless it was written before."""
    from crm_sync.engine.full_copy.load import load_unit, unit_progress
    from crm_sync.engine.transform import TRANSFORM_MANIFEST

    scope = CopyScope.from_dict(scope_data)
    entity = entity_config(settings, name)
    _, ctx = _partition(settings, name, scope)
    with task_session(settings, entity=name, stage="load", marketo=True, ctx=ctx) as task:
        transform = ctx.staging.read_json(ctx.staging.run_dir(name, ctx.run_id), TRANSFORM_MANIFEST) or {}
        total = sum(int(u.get("records") or 0) for u in transform.get("batches", []))
        outcome = load_unit(entity, ctx, unit, task.marketo, total_records=total)
        log.info("progress: %s", unit_progress(entity, ctx, transform))
    return outcome


def commit(settings: RunSettings, name: str, scope_data: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``<entity>.commit``: ledger, hand-over watermark, attempt finished."""
    from crm_sync.engine.full_copy.commit import commit_partition
    from crm_sync.engine.full_copy.scope import close_partition

    scope = CopyScope.from_dict(scope_data)
    if not scope.includes(name):
        return {"entity": name, "not_selected": True}
    entity = entity_config(settings, name)
    partition, ctx = _partition(settings, name, scope)
    if scope.dry_run:
        try:
            close_partition(ctx.staging, partition)
        finally:
            ctx.state.dispose()
        return {"entity": name, "dry_run": True}
    # The id read-back's calls count for the day's quota (logged after the ledger row).
    with task_session(settings, entity=name, stage="commit", marketo=True, ctx=ctx) as task:
        persons = [e for e in entities_in(settings.entities_dir).values() if e.marketo.person_type]
        counts = commit_partition(entity, ctx, ctx.staging, partition, task.marketo, persons)
    return {"entity": name, **counts}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Task ``summary``: one line per entity and the totals, in the log and XCom."""
    totals = {"extracted": 0, "loaded": 0, "failed": 0, "skipped": 0}
    lines = []
    for row in results:
        if row.get("not_selected") or row.get("dry_run"):
            continue
        for key in totals:
            totals[key] += int(row.get(key, 0))
        lines.append(
            f"{row['entity']:<14} extracted {row.get('extracted', 0):>9,}  "
            f"loaded {row.get('loaded', 0):>9,}  "
            f"failed {row.get('failed', 0):>6,}  unchanged/filtered {row.get('skipped', 0):>9,}  "
            f"{row.get('records_per_second', 0):>9,.0f} records/s"
        )
    log.info("full copy summary:\n%s\ntotal: %s", "\n".join(lines) or "(nothing copied)", totals)
    return {"entities": results, "totals": totals}
