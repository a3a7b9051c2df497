"""Task entry points of ``sync_activities`` and ``sync_activities_history`` (issue 20).

Each builds its hooks and run context through :func:`crm_sync.tasks.common.task_session` (the
connection's limits, the Dataverse window reserve, calls counted into the call log under the
entity ``activity``) and calls :mod:`crm_sync.marketing.activity_run`. Returns small JSON-ready
dicts for XCom (references and counts).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from crm_sync.tasks.common import context, entities_in, task_session

if TYPE_CHECKING:
    from datetime import datetime

    from crm_sync.engine.context import RunSettings
    from crm_sync.guards import GuardSettings
    from crm_sync.marketing.activities import PersonTable
    from crm_sync.marketing.activity_config import ActivityMapping

log = logging.getLogger(__name__)

ENTITY = "activity"


@lru_cache(maxsize=4)
def mapping(path: str | None = None) -> ActivityMapping:
    """The validated activity mapping: ``path``, else ``$MDS_ACTIVITIES_FILE``, else the project's
    ``activities.yaml``."""
    from pathlib import Path

    from crm_sync.marketing.activity_config import load_activities

    return load_activities(Path(path) if path else None)


def person_tables(settings: RunSettings, names: tuple[str, ...]) -> list[PersonTable]:
    """The person entities the activities resolve through, with their Dataverse table names.

    Raises:
        KeyError: A name is not a person entity of the entity folder.
    """
    from crm_sync.marketing.activities import PersonTable

    entities = entities_in(settings.entities_dir)
    out = []
    for name in names:
        entity = entities.get(name)
        if entity is None or not entity.marketo.person_type:
            raise KeyError(
                f"activities.yaml persons: {name!r} is not a person entity in {settings.entities_dir}"
            )
        out.append(PersonTable(name, entity.dynamics.table, entity.dynamics.entity_set))
    return out


def run_extract(
    settings: RunSettings,
    guards: GuardSettings,
    *,
    window: tuple[datetime, datetime] | None = None,
    export_limit_mb: float = 500.0,
    export_job: dict[str, Any] | None = None,
    mapping_path: str | None = None,
) -> dict[str, Any]:
    """Task ``extract``: check the budget, read, map and stage the run's activities.

    With ``window`` (a history run's data interval) the activities come from the bulk export,
    otherwise from the activity feed since the watermark.

    Raises:
        QuotaDeferred: Too little of the Marketo budget (or of the export volume) is left for
            this low-priority sync; nothing was read and the ledger says ``deferred``.
    """
    from crm_sync.marketing import activity_budget, activity_run

    config = mapping(mapping_path)
    persons = person_tables(settings, config.persons)
    need = activity_run.EXPORT_CALLS if window else activity_run.FEED_CALLS
    with task_session(settings, entity=ENTITY, stage="extract", marketo=True, migrate=True) as task:
        budget = activity_budget.check_budget(task.ctx, guards, need)
        log.info("activities budget: %s", budget)
        manifest = activity_run.extract(
            task.ctx,
            task.marketo,
            config,
            persons,
            window=activity_run.Window(*window) if window else None,
            export_job=export_job,
            export_limit_mb=export_limit_mb,
        )
    return {"batches": manifest["batches"], "counts": manifest["counts"], "budget": budget}


def run_load(settings: RunSettings, batch: dict[str, Any], mapping_path: str | None = None) -> dict[str, Any]:
    """Task ``load`` (mapped per staged batch): one ``$batch`` of upserts; its outcome counts."""
    from crm_sync.marketing import activity_run

    with task_session(settings, entity=ENTITY, stage=f"load:{batch['name']}", dynamics=True) as task:
        return activity_run.load_batch(task.ctx, task.dynamics, mapping(mapping_path), batch)


def run_commit(settings: RunSettings) -> dict[str, Any]:
    """Task ``commit``: advance the feed watermark and write the run ledger; the run's counts."""
    from crm_sync.marketing import activity_run

    ctx = context(settings)
    try:
        return activity_run.commit(ctx)
    finally:
        ctx.state.dispose()
