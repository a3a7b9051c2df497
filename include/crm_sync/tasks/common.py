"""What every task entry point shares: settings from Airflow, the entities, hooks, the context.

Imported inside tasks (never at DAG parse time, except :func:`entities_dir`, which reads only
an environment variable). The hooks are built here, with the connection's limits and the
Dataverse window reserve, and their calls are counted into the state store's call log.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_sync.config import ENTITIES_DIR, EntityConfig, load_entities_each
from crm_sync.engine.context import RunContext, RunSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    project's SQLite state store and ``var/staging``, and the Dataverse window reserve of the
    Variable ``mds_dynamics_window_reserve``. ``extra`` sets further fields.
    """
    from airflow.sdk import Variable

    from crm_sync.localenv import PROJECT_DIR
    from crm_sync.state import default_url
    from crm_sync_hooks.base import register_url_password

    if "dynamics_window_reserve" not in extra:  # every DAG leaves other integrations their share
        from crm_sync.guards.variables import dynamics_reserve

        extra["dynamics_window_reserve"] = dynamics_reserve()
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
def entities_in(directory: str) -> dict[str, EntityConfig]:
    """The valid entities of ``directory``: a broken file stops only its own entity's runs."""
    return load_entities_each(Path(directory))[0]


def entity_config(settings: RunSettings, name: str) -> EntityConfig:
    """The validated entity ``name`` from the settings' entity folder.

    Raises:
        KeyError: No YAML file defines ``name``.
    """
    entities = entities_in(settings.entities_dir)
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


def marketo_hook(settings: RunSettings) -> MarketoHook:
    from crm_sync_hooks.marketo import MarketoHook

    return MarketoHook(settings.marketo_conn_id)


def dynamics_hook(settings: RunSettings) -> DynamicsHook:
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


def count_calls(hooks: dict[str, Any]) -> CallCounter:
    """A counter attached to each hook of ``{"marketo": hook, "dynamics": hook}`` (None skipped)."""
    from crm_sync.guards.calls import CallCounter

    counter = CallCounter()
    for system, hook in hooks.items():
        if hook is not None:
            counter.attach(hook, system)
    return counter


def record_calls(ctx: RunContext, name: str, stage: str, counter: CallCounter) -> None:
    """Add the calls one task attempt sent to the run's call log (also after a failure)."""
    from crm_sync.state import session_scope
    from crm_sync.state.guards import add_api_calls

    calls = counter.as_dict()
    if not calls:
        return
    with session_scope(ctx.state) as session:
        add_api_calls(session, run_id=ctx.run_id, entity=name, stage=stage, calls=calls)
    log.info("%s %s: API calls %s", name, stage, calls)


@dataclass
class TaskSession:
    """What one task attempt works with: the run context and the hooks it asked for.

    Attributes:
        ctx: Staging area and state store of the run.
        marketo_or_none: The Marketo hook, or None when the task does not call Marketo.
        dynamics_or_none: The Dataverse hook (with the sync's share of the request window), or None.
        counter: Counts the hooks' calls; :meth:`flush_calls` records them early.
    """

    ctx: RunContext
    marketo_or_none: MarketoHook | None
    dynamics_or_none: DynamicsHook | None
    counter: CallCounter
    entity: str
    stage: str

    @property
    def marketo(self) -> MarketoHook:
        """The Marketo hook (the session was opened with ``marketo=True``)."""
        if self.marketo_or_none is None:
            raise RuntimeError("this task session was opened without a Marketo hook")
        return self.marketo_or_none

    @property
    def dynamics(self) -> DynamicsHook:
        """The Dataverse hook (the session was opened with ``dynamics=True``)."""
        if self.dynamics_or_none is None:
            raise RuntimeError("this task session was opened without a Dataverse hook")
        return self.dynamics_or_none

    def flush_calls(self) -> None:
        """Record the calls sent so far now (a guard that stops the run writes its ledger next)."""
        if self.stage:
            record_calls(self.ctx, self.entity, self.stage, self.counter)
        self.counter.counts.clear()


@contextmanager
def task_session(
    settings: RunSettings,
    *,
    entity: str = "",
    stage: str = "",
    marketo: bool = False,
    dynamics: bool = False,
    migrate: bool = False,
    ctx: RunContext | None = None,
) -> Iterator[TaskSession]:
    """Build the hooks and the run context of one task attempt, and always clean up after it.

    Every DAG's tasks (sync, full copy, reconcile, rebaseline) get their hooks here, so each
    one uses the connection's limits and the Dataverse window reserve; the calls they send are
    added to the run's call log under ``stage`` (when given) even when the task fails; the hooks
    are closed and the state store's connections disposed.

    Args:
        settings: The run's settings.
        entity: The entity the calls are logged for.
        stage: The stage name in the call log; empty logs nothing.
        marketo: Build a Marketo hook.
        dynamics: Build a Dataverse hook.
        migrate: Bring the state store to the head revision first (the first task of a run).
        ctx: A context of the caller's instead of one built from ``settings`` (disposed too).
    """
    run = ctx or context(settings, migrate)
    m_hook = marketo_hook(settings) if marketo else None
    d_hook = None
    try:
        d_hook = dynamics_hook(settings) if dynamics else None
        counter = count_calls({"marketo": m_hook, "dynamics": d_hook})
        session = TaskSession(run, m_hook, d_hook, counter, entity, stage)
        try:
            yield session
        finally:
            session.flush_calls()
    finally:
        for hook in (d_hook, m_hook):
            if hook is not None:
                hook.close()
        run.state.dispose()
