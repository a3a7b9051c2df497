"""One entry point per DAG task: build the hooks, state store and staging area, call the engine.

The DAG file stays thin: it reads Airflow Variables and the run id into :class:`RunSettings`
and calls these functions, which import the hooks and pandas only when a task runs (never at
DAG parse time). Each function returns a small JSON-ready dict for XCom (paths and counts).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_sync.config import ENTITIES_DIR, Direction, EntityConfig, load_entities_each
from crm_sync.engine.context import RunContext, RunSettings

if TYPE_CHECKING:
    from crm_sync.guards import GuardSettings
    from crm_sync.guards.calls import CallCounter
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

log = logging.getLogger(__name__)


ENTITIES_ENV = "MDS_ENTITIES_DIR"


def entities_dir() -> str:
    """The folder of the entity files: ``$MDS_ENTITIES_DIR`` or the project's own."""
    import os

    return os.environ.get(ENTITIES_ENV) or str(ENTITIES_DIR)


def settings_from_airflow(run_id: str, entities: str | None = None, **extra: Any) -> RunSettings:
    """Run settings from the Airflow Variables ``mds_state_db_url`` and ``mds_staging_path``.

    Called inside a task (Variables are read then, never at DAG parse time); defaults are the
    project's SQLite state store and ``var/staging``. ``extra`` sets further fields.
    """
    from airflow.sdk import Variable

    from crm_sync.localenv import PROJECT_DIR
    from crm_sync.state import default_url
    from crm_sync_hooks.base import register_url_password

    state_url = Variable.get("mds_state_db_url", default=None) or default_url()
    register_url_password(state_url)  # a database password in the URL never reaches a log
    return RunSettings(
        run_id=run_id,
        state_url=state_url,
        staging_url=Variable.get("mds_staging_path", default=None)
        or f"file://{PROJECT_DIR / 'var' / 'staging'}",
        entities_dir=entities or entities_dir(),
        **extra,
    )


@lru_cache(maxsize=8)
def _entities(directory: str) -> dict[str, EntityConfig]:
    """The valid entities of ``directory``: a broken file stops only its own entity's runs."""
    return load_entities_each(Path(directory))[0]


def entity_config(settings: RunSettings, name: str) -> EntityConfig:
    """The validated entity ``name`` from the settings' entity folder.

    Raises:
        KeyError: No YAML file defines ``name``.
    """
    entities = _entities(settings.entities_dir)
    if name not in entities:
        raise KeyError(f"no entity {name!r} in {settings.entities_dir}")
    return entities[name]


def context(settings: RunSettings, migrate: bool = False) -> RunContext:
    """Staging area and state store for this run; ``migrate`` brings the store to the head revision.

    Only the first task of a run migrates; the later ones find the schema in place.
    """
    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.staging import StagingArea
    from crm_sync.state import make_engine, upgrade

    engine = make_engine(settings.state_url)
    if migrate:
        upgrade(engine)
    return RunContext(settings.run_id, StagingArea(ObjectStoragePath(settings.staging_url)), engine)


def _marketo(settings: RunSettings) -> MarketoHook:
    from crm_sync_hooks.marketo import MarketoHook

    return MarketoHook(settings.marketo_conn_id)


def _dynamics(settings: RunSettings) -> DynamicsHook:
    """The Dataverse hook; with a window reserve, on a limiter that allows only the sync's share."""
    from crm_sync_hooks.base import shared_limiter
    from crm_sync_hooks.dynamics import DynamicsHook

    hook = DynamicsHook(settings.dynamics_conn_id)
    if settings.dynamics_window_reserve <= 0:
        return hook
    from dataclasses import replace

    from crm_sync.guards.quota import dynamics_window_calls

    limits = hook.limits
    capped = replace(
        limits, max_calls=dynamics_window_calls(limits.max_calls, settings.dynamics_window_reserve)
    )
    # The same scope as the hook's own limiter (limits are per application user), so every
    # process of the sync shares one count and stops at the capped figure.
    scope = f"dynamics:{hook.org_url}:{hook.settings.login}"
    limiter = shared_limiter(hook.settings.text("limiter_url"), scope, capped)
    return DynamicsHook(settings.dynamics_conn_id, limiter=limiter)


def _count_calls(hooks: dict[str, Any]) -> CallCounter:
    """A counter attached to each hook of ``{"marketo": hook, "dynamics": hook}`` (None skipped)."""
    from crm_sync.guards.calls import CallCounter

    counter = CallCounter()
    for system, hook in hooks.items():
        if hook is not None:
            counter.attach(hook, system)
    return counter


def _record_calls(ctx: RunContext, name: str, stage: str, counter: CallCounter) -> None:
    """Add the calls one task attempt sent to the run's call log (also after a failure)."""
    from crm_sync.state import session_scope
    from crm_sync.state.guards import add_api_calls

    calls = counter.as_dict()
    if not calls:
        return
    with session_scope(ctx.state) as session:
        add_api_calls(session, run_id=ctx.run_id, entity=name, stage=stage, calls=calls)
    log.info("%s %s: API calls %s", name, stage, calls)


def run_extract(settings: RunSettings, name: str) -> dict[str, Any]:
    """Task ``extract_changes``: stage the changes; returns the manifest URL and counts."""
    from crm_sync.engine.extract import EXTRACT_MANIFEST, extract_changes, person_fields

    entity = entity_config(settings, name)
    ctx = context(settings, migrate=True)
    dynamics = (
        _dynamics(settings) if entity.direction.includes(Direction.D2M) or entity.writes_dynamics else None
    )
    marketo = _marketo(settings) if entity.direction.includes(Direction.M2D) else None
    counter = None
    try:
        counter = _count_calls({"marketo": marketo, "dynamics": dynamics})
        everything = _entities(settings.entities_dir).values()
        persons = [e for e in everything if e.marketo.person_type and e.writes_dynamics]
        manifest = extract_changes(
            entity,
            ctx,
            dynamics=dynamics,
            marketo=marketo,
            feed_fields=person_fields(everything),
            dedup_tables=persons,
        )
    finally:
        for hook in (dynamics, marketo):
            if hook is not None:
                hook.close()
        try:
            if counter is not None:
                _record_calls(ctx, name, "extract_changes", counter)
        finally:
            ctx.state.dispose()
    folder = ctx.staging.run_dir(name, settings.run_id)
    return {
        "manifest": str(folder / f"{EXTRACT_MANIFEST}.json"),
        "dynamics_rows": (manifest["dynamics"] or {}).get("rows", 0),
        "deleted_rows": (manifest["dynamics"] or {}).get("deleted_rows", 0),
        "marketo_rows": (manifest["marketo"] or {}).get("rows", 0),
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
    ctx = context(settings)
    try:
        result = transform_changes(entity, ctx, _manifest(ctx, name, EXTRACT_MANIFEST))
    finally:
        ctx.state.dispose()
    return list(result["batches"])


def run_load(settings: RunSettings, name: str, batch: dict[str, Any]) -> dict[str, Any]:
    """Task ``load`` (mapped per batch): write one staged plan; returns its outcome counts."""
    from crm_sync.engine.load import load_batch

    entity = entity_config(settings, name)
    ctx = context(settings)
    marketo = _marketo(settings)
    dynamics = _dynamics(settings) if entity.writes_dynamics else None
    counter = None
    try:
        counter = _count_calls({"marketo": marketo, "dynamics": dynamics})
        return load_batch(entity, ctx, batch, marketo=marketo, dynamics=dynamics)
    finally:
        for hook in (dynamics, marketo):
            if hook is not None:
                hook.close()
        try:
            if counter is not None:
                _record_calls(ctx, name, f"load:{batch.get('name', '?')}", counter)
        finally:
            ctx.state.dispose()


def run_commit(settings: RunSettings, name: str) -> dict[str, Any]:
    """Task ``commit``: advance the watermarks and write the ledger; returns the run's counts."""
    from crm_sync.engine.commit import commit
    from crm_sync.engine.extract import EXTRACT_MANIFEST
    from crm_sync.engine.transform import TRANSFORM_MANIFEST

    entity = entity_config(settings, name)
    ctx = context(settings)
    try:
        return commit(
            entity, ctx, _manifest(ctx, name, EXTRACT_MANIFEST), _manifest(ctx, name, TRANSFORM_MANIFEST)
        )
    finally:
        ctx.state.dispose()


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
    ctx = context(settings, migrate=True)
    marketo = _marketo(settings)
    dynamics = _dynamics(settings)
    counter = None
    try:
        counter = _count_calls({"marketo": marketo, "dynamics": dynamics})
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
            _record_calls(ctx, name, "preflight", counter)
            counter = None
            status = (
                "schema_drift"
                if isinstance(exc, SchemaDriftError)
                else "visibility"
                if isinstance(exc, VisibilityCollapsed)
                else "over_quota"
            )
            _stop_ledger(ctx, entity, status)
            raise
    finally:
        for hook in (dynamics, marketo):
            hook.close()
        try:
            if counter is not None:
                _record_calls(ctx, name, "preflight", counter)
        finally:
            ctx.state.dispose()
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
