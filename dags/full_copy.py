"""``full_copy``: copy every Dynamics record (or those created in one stretch) into Marketo.

Thin wiring only; the logic is :mod:`crm_sync.engine.full_copy`. Per entity, in dependency
order (``depends_on`` in the entity files: users and teams, accounts, persons, opportunities,
custom entities): ``extract`` (Dataverse pages of 5,000, mapped columns only, resumable) →
``plan`` (mapping, sync filter, id-map matching, load units) → ``load`` (mapped, one task per
unit: bulk import for persons above the threshold, sync calls otherwise) → ``commit``.

* **Never scheduled**: the timetable has monthly data intervals for backfills only; the DAG runs
  when triggered or backfilled, never because it was unpaused or a month ended.
* **Backfill**: the monthly timetable has real data intervals, so
  ``airflow backfill create --dag-id full_copy --from-date 2025-01-01 --to-date 2025-03-01`` copies
  the records created in January, February and March (one run per month, each run's
  ``[data_interval_start, data_interval_end)`` on ``createdon``), runs in parallel up to
  ``max_active_runs`` and the pools.
* **Manual trigger**: copies everything, or what the Params choose (``entities``, ``from_date``,
  ``to_date`` inclusive, ``dry_run``). The first copy of everything hands over to the incremental
  DAGs (a change-tracking token taken before the copy becomes their watermark).
* A killed or failed run continues where it stopped when run again: finished pages are not
  read again and finished units are not written again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, get_current_context, task

from crm_sync.config import load_entities_each
from crm_sync.dag_defaults import default_args
from crm_sync.engine.full_copy.scope import copy_order
from crm_sync.tasks.common import entities_dir
from crm_sync_timetables.backfill_only import BackfillOnlyCronTimetable

log = logging.getLogger(__name__)

MARKETO_POOL = "marketo_api"
DYNAMICS_POOL = "dynamics_api"
# Backfills may start in any month of the CRM's history.
HISTORY_START = datetime(2000, 1, 1, tzinfo=UTC)


def _settings() -> Any:
    from crm_sync.tasks.common import settings_from_airflow

    return settings_from_airflow(str(get_current_context()["run_id"]))


# A broken entity file is left out (dags/entity_files.py reports it as an import error).
ENTITIES = load_entities_each(Path(entities_dir()))[0]

with DAG(
    dag_id="full_copy",
    # Monthly data intervals for backfills; never a scheduled run (see BackfillOnlyCronTimetable).
    schedule=BackfillOnlyCronTimetable("0 0 1 * *", timezone="UTC"),
    start_date=HISTORY_START,
    catchup=False,
    max_active_runs=3,
    default_args=default_args(),
    tags=["marketo-dynamics-sync", "kind:full-copy", "direction:d2m", "entity:all"],
    doc_md=__doc__,
    params={
        "entities": Param(
            [], type="array", items={"type": "string"}, description="Entities to copy; empty: all."
        ),
        "from_date": Param(
            None, type=["null", "string"], format="date", description="Created on or after (manual runs)."
        ),
        "to_date": Param(
            None, type=["null", "string"], format="date", description="Created on or before (inclusive)."
        ),
        "dry_run": Param(False, type="boolean", description="Report what would be written; write nothing."),
    },
) as dag:

    @task(task_id="prepare")
    def prepare() -> dict[str, Any]:
        from crm_sync.tasks import full_copy as full_copy_tasks

        context = get_current_context()
        dag_run = context["dag_run"]
        return full_copy_tasks.prepare(
            _settings(),
            context["params"],
            run_type=getattr(dag_run, "run_type", None),
            interval_start=context.get("data_interval_start"),
            interval_end=context.get("data_interval_end"),
        )

    @task(task_id="summary", trigger_rule="none_failed")
    def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
        from crm_sync.tasks import full_copy as full_copy_tasks

        return full_copy_tasks.summarize(list(results))

    scope: Any = prepare()  # an XComArg, resolved to the scope dict when a task runs
    commits: dict[str, Any] = {}
    for tier in copy_order(ENTITIES):
        for name in tier:
            with TaskGroup(group_id=name):

                @task(task_id="extract", pool=DYNAMICS_POOL)
                def extract(scope_data: dict[str, Any], name: str = name) -> dict[str, Any]:
                    from crm_sync.tasks import full_copy as full_copy_tasks

                    return full_copy_tasks.extract(_settings(), name, scope_data)

                @task(task_id="plan")
                def plan(scope_data: dict[str, Any], name: str = name) -> list[dict[str, Any]]:
                    from crm_sync.tasks import full_copy as full_copy_tasks

                    return full_copy_tasks.plan(_settings(), name, scope_data)

                @task(task_id="load", pool=MARKETO_POOL)
                def load(
                    unit: dict[str, Any], scope_data: dict[str, Any], name: str = name
                ) -> dict[str, Any]:
                    from crm_sync.tasks import full_copy as full_copy_tasks

                    return full_copy_tasks.load(_settings(), name, scope_data, unit)

                @task(task_id="commit", trigger_rule="none_failed")
                def commit(scope_data: dict[str, Any], name: str = name) -> dict[str, Any]:
                    from crm_sync.tasks import full_copy as full_copy_tasks

                    return full_copy_tasks.commit(_settings(), name, scope_data)

                units = plan(scope)
                extract(scope) >> units
                done = commit(scope)
                load.partial(scope_data=scope).expand(unit=units) >> done
                for dependency in ENTITIES[name].depends_on:
                    if dependency in commits:
                        commits[dependency] >> units
                commits[name] = done
    summary(list(commits.values()))
