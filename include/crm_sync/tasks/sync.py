"""One entry point per task of a ``sync_<entity>`` DAG: build the hooks, state store and staging
area (:mod:`crm_sync.tasks.common`), call the engine, decide what its typed errors mean.

The DAG file stays thin: it reads Airflow Variables and the run id into :class:`RunSettings`
and calls these functions, which import the hooks and pandas only when a task runs (never at
DAG parse time). Each function returns a small JSON-ready dict for XCom (paths and counts).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crm_sync.config import Direction, EntityConfig
from crm_sync.tasks.common import context, entities_in, entity_config, task_session

if TYPE_CHECKING:
    from crm_sync.engine.context import RunContext, RunSettings
    from crm_sync.guards import GuardSettings

log = logging.getLogger(__name__)


def run_extract(settings: RunSettings, name: str) -> dict[str, Any]:
    """Task ``extract_changes``: stage the changes; returns the manifest URL and counts."""
    from crm_sync.engine.columns import person_fields
    from crm_sync.engine.contracts import ExtractManifest
    from crm_sync.engine.extract import EXTRACT_MANIFEST, extract_changes
    from crm_sync.rebaseline import on_identity_mismatch
    from crm_sync.state import IdentityMismatchError

    entity = entity_config(settings, name)
    reads_dynamics = entity.direction.includes(Direction.D2M) or entity.writes_dynamics
    with task_session(
        settings,
        entity=name,
        stage="extract_changes",
        marketo=entity.direction.includes(Direction.M2D),
        dynamics=reads_dynamics,
        migrate=True,
    ) as task:
        ctx = task.ctx
        everything = entities_in(settings.entities_dir).values()
        persons = [e for e in everything if e.marketo.person_type and e.writes_dynamics]
        try:
            manifest = extract_changes(
                entity,
                ctx,
                dynamics=task.dynamics_or_none,
                marketo=task.marketo_or_none,
                feed_fields=person_fields(everything),
                dedup_tables=persons,
            )
        except IdentityMismatchError as err:
            # A refreshed sandbox (or a re-pointed connection): alert, pause, stop for good.
            on_identity_mismatch(entity, ctx.run_id, err)
    folder = ctx.staging.run_dir(name, settings.run_id)
    extracted = ExtractManifest.from_xcom(manifest)
    return {
        "manifest": str(folder / f"{EXTRACT_MANIFEST}.json"),
        "dynamics_rows": extracted.dynamics.rows if extracted.dynamics else 0,
        "deleted_rows": extracted.dynamics.deleted_rows if extracted.dynamics else 0,
        "marketo_rows": extracted.marketo.rows if extracted.marketo else 0,
    }


def _manifest(ctx: RunContext, name: str, which: str) -> dict[str, Any]:
    data = ctx.staging.read_json(ctx.staging.run_dir(name, ctx.run_id), which)
    if data is None:
        raise FileNotFoundError(f"{name}: run {ctx.run_id} has no staged {which} manifest")
    return data


def run_transform(settings: RunSettings, name: str) -> list[dict[str, Any]]:
    """Task ``transform``: plan and stage the writes; returns the load batch references."""
    from crm_sync.engine.extract import EXTRACT_MANIFEST
    from crm_sync.engine.transform import transform_changes

    entity = entity_config(settings, name)
    with task_session(settings) as task:
        result = transform_changes(entity, task.ctx, _manifest(task.ctx, name, EXTRACT_MANIFEST))
    return list(result["batches"])


def run_load(settings: RunSettings, name: str, batch: dict[str, Any]) -> dict[str, Any]:
    """Task ``load`` (mapped per batch): write one staged plan; returns its outcome counts."""
    from crm_sync.engine.load import load_batch

    entity = entity_config(settings, name)
    with task_session(
        settings,
        entity=name,
        stage=f"load:{batch.get('name', '?')}",
        marketo=True,
        dynamics=entity.writes_dynamics,
    ) as task:
        outcome = load_batch(entity, task.ctx, batch, marketo=task.marketo, dynamics=task.dynamics_or_none)
    return outcome.to_xcom()


def run_commit(settings: RunSettings, name: str) -> dict[str, Any]:
    """Task ``commit``: advance the watermarks and write the ledger; returns the run's counts."""
    from crm_sync.engine.commit import commit
    from crm_sync.engine.extract import EXTRACT_MANIFEST
    from crm_sync.engine.transform import TRANSFORM_MANIFEST

    entity = entity_config(settings, name)
    with task_session(settings) as task:
        ctx = task.ctx
        summary = commit(
            entity, ctx, _manifest(ctx, name, EXTRACT_MANIFEST), _manifest(ctx, name, TRANSFORM_MANIFEST)
        )
    return summary.to_xcom()


def _stop_ledger(ctx: RunContext, entity: EntityConfig, status: str, started: str | None = None) -> None:
    """Write the ledger row of a run a guard stopped (status ``schema_drift``, ``over_quota``,
    ``deferred`` or ``mass_delete``), with the calls it spent so far."""
    from datetime import datetime

    from crm_sync.state import RunCounts, session_scope, utcnow, write_ledger
    from crm_sync.state.guards import run_api_calls

    now = utcnow()
    with session_scope(ctx.state) as session:
        calls = sum(run_api_calls(session, ctx.run_id, entity.name).values())
        write_ledger(
            session,
            RunCounts(
                run_id=ctx.run_id,
                entity=entity.name,
                direction=entity.direction.value,
                status=status,
                api_calls=calls,
                started_at=datetime.fromisoformat(started) if started else now,
                ended_at=now,
            ),
        )


def run_preflight(
    settings: RunSettings, name: str, guards: GuardSettings, *, accept_row_counts: bool = False
) -> dict[str, Any]:
    """Task ``preflight``: Marketo budget left today, the schema drift check, then (at most every
    ``visibility_check_minutes``) the rows the Dataverse application user sees.

    Returns:
        ``quota`` (:func:`crm_sync.guards.quota.quota_status`), ``schema`` (the drift
        report: objects checked, ``new_fields``, ``changed_types``) and ``visibility`` (the
        figures, or None when no count was due).

    Raises:
        QuotaExceededError: Nothing is left of today's Marketo budget.
        SchemaDriftError: A mapped field was removed, renamed or changed type; names each one.
        VisibilityCollapsed: Far fewer rows are visible than last time (a narrowed role).
    """
    from crm_sync.guards import GuardError
    from crm_sync.guards.drift import SchemaDriftError, check_schema, raise_for_drift
    from crm_sync.guards.quota import check_preflight, quota_status
    from crm_sync.guards.visibility import VisibilityCollapsed, probe_visibility
    from crm_sync.state import session_scope, utcnow

    entity = entity_config(settings, name)
    with task_session(
        settings, entity=name, stage="preflight", marketo=True, dynamics=True, migrate=True
    ) as task:
        ctx, marketo, dynamics = task.ctx, task.marketo, task.dynamics
        with session_scope(ctx.state) as session:
            quota = quota_status(
                session, now=utcnow(), daily_quota=guards.daily_quota, reserve_share=guards.reserve_share
            )
        try:
            check_preflight(entity, quota)
            with session_scope(ctx.state) as session:
                schema = check_schema(entity, session, marketo=marketo, dynamics=dynamics, today=quota["day"])
            raise_for_drift(entity, schema)
            with session_scope(ctx.state) as session:
                visibility = probe_visibility(
                    session,
                    entity.name,
                    lambda: dynamics.count_rows(entity.dynamics.entity_set),
                    tolerance=guards.visibility_tolerance,
                    every_minutes=guards.visibility_check_minutes,
                    accepted=accept_row_counts,
                )
        except GuardError as exc:
            task.flush_calls()  # the ledger row of the stopped run counts them
            status = (
                "schema_drift"
                if isinstance(exc, SchemaDriftError)
                else "visibility"
                if isinstance(exc, VisibilityCollapsed)
                else "over_quota"
            )
            _stop_ledger(ctx, entity, status)
            raise
    return {"quota": quota, "schema": schema, "visibility": visibility}


def _op_counts(ctx: RunContext, batches: list[dict[str, Any]]) -> list[dict[str, int]]:
    """``{operation: records}`` of each staged load batch."""
    counts = []
    for batch in batches:
        ops = ctx.staging.read_frame(batch["ops"])
        counts.append({str(k): int(v) for k, v in ops["op"].value_counts().items()})
    return counts


def run_guard(
    settings: RunSettings,
    name: str,
    batches: list[dict[str, Any]],
    guards: GuardSettings,
    *,
    confirm_deletes: bool = False,
) -> dict[str, Any]:
    """Task ``guard`` (after the transform, before any write): mass deletes, then the budget.

    Returns:
        ``batches`` (unchanged, for the load), ``deletes`` (the mass-delete figures),
        ``budget`` (the load's estimated calls and what is left after it) and ``quota``.

    Raises:
        MassDeleteBlocked: Too many deletes and ``confirm_deletes`` is not set.
        QuotaExceededError: The load does not fit in what is left of today's Marketo budget.
        QuotaDeferred: A low-priority entity is put off to keep budget for the others.
    """
    from crm_sync.engine.extract import EXTRACT_MANIFEST
    from crm_sync.guards import GuardError
    from crm_sync.guards.deletes import MassDeleteBlocked, check_mass_delete, linked_records, planned_deletes
    from crm_sync.guards.quota import QuotaDeferred, check_budget, estimate_load_calls, quota_status
    from crm_sync.state import session_scope, utcnow

    entity = entity_config(settings, name)
    ctx = context(settings)
    try:
        op_counts = _op_counts(ctx, batches)
        estimate = estimate_load_calls(op_counts)
        with session_scope(ctx.state) as session:
            linked = linked_records(session, entity.name)
            quota = quota_status(
                session, now=utcnow(), daily_quota=guards.daily_quota, reserve_share=guards.reserve_share
            )
        try:
            deletes = check_mass_delete(
                entity,
                deletes=planned_deletes(op_counts),
                linked=linked,
                max_share=guards.max_delete_share,
                min_records=guards.mass_delete_min_records,
                confirmed=confirm_deletes,
            )
            budget = check_budget(entity, estimate, quota, guards)
        except GuardError as exc:
            status = (
                "mass_delete"
                if isinstance(exc, MassDeleteBlocked)
                else "deferred"
                if isinstance(exc, QuotaDeferred)
                else "over_quota"
            )
            started = _manifest(ctx, name, EXTRACT_MANIFEST).get("started_at")
            _stop_ledger(ctx, entity, status, started)
            raise
    finally:
        ctx.state.dispose()
    log.info("%s guard: deletes %s, budget %s", name, deletes, budget)
    return {"batches": batches, "deletes": deletes, "budget": budget, "quota": quota}
