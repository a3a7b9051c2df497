"""One entry point per DAG task: build the hooks, state store and staging area, call the engine.

The DAG file stays thin: it reads Airflow Variables and the run id into :class:`RunSettings`
and calls these functions, which import the hooks and pandas only when a task runs (never at
DAG parse time). Each function returns a small JSON-ready dict for XCom (paths and counts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_sync.config import ENTITIES_DIR, Direction, EntityConfig, load_entities

if TYPE_CHECKING:
    from crm_sync.engine.extract import RunContext
    from crm_sync_hooks.dynamics import DynamicsHook
    from crm_sync_hooks.marketo import MarketoHook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """Everything a task needs besides the entity: where state and staging live, which connections.

    Attributes:
        run_id: The Airflow run id.
        state_url: SQLAlchemy URL of the state store (Variable ``mds_state_db_url``).
        staging_url: Staging root (Variable ``mds_staging_path``), e.g. ``file:///srv/staging``.
        entities_dir: Folder of the entity YAML files.
        marketo_conn_id: Airflow connection of Marketo.
        dynamics_conn_id: Airflow connection of Dataverse.
    """

    run_id: str
    state_url: str
    staging_url: str
    entities_dir: str = str(ENTITIES_DIR)
    marketo_conn_id: str = "marketo_default"
    dynamics_conn_id: str = "dynamics_default"

    def __repr__(self) -> str:
        # URLs may carry a password (PostgreSQL); never show them in logs.
        return f"RunSettings(run_id={self.run_id!r}, entities_dir={self.entities_dir!r})"


@lru_cache(maxsize=8)
def _entities(directory: str) -> dict[str, EntityConfig]:
    return load_entities(Path(directory))


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

    from crm_sync.engine.extract import RunContext
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
    from crm_sync_hooks.dynamics import DynamicsHook

    return DynamicsHook(settings.dynamics_conn_id)


def run_extract(settings: RunSettings, name: str) -> dict[str, Any]:
    """Task ``extract_changes``: stage the changes; returns the manifest URL and counts."""
    from crm_sync.engine.extract import EXTRACT_MANIFEST, extract_changes, person_fields

    entity = entity_config(settings, name)
    ctx = context(settings, migrate=True)
    dynamics = (
        _dynamics(settings) if entity.direction.includes(Direction.D2M) or entity.writes_dynamics else None
    )
    marketo = _marketo(settings) if entity.direction.includes(Direction.M2D) else None
    try:
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
    try:
        return load_batch(entity, ctx, batch, marketo=marketo, dynamics=dynamics)
    finally:
        for hook in (dynamics, marketo):
            if hook is not None:
                hook.close()
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
