"""``rebaseline``: start over cleanly after a Dynamics sandbox refresh (manual, with Params).

Thin wiring around :mod:`crm_sync.rebaseline`: ``detect`` reports the markers (organization id,
linked ids that no longer resolve); ``plan`` reads both systems, checks the visible row counts
and writes the dry-run report; with ``confirm`` set, ``pause_sync`` pauses every sync DAG,
``relink`` applies the plan (only for a refreshed org, through the mass-delete guard: external
id, then email; objects keyed by vanished ids are re-created by the sync) and resets the state
store's identity and watermarks, and ``unpause_sync`` lets the sync DAGs run again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Param, get_current_context, task

from crm_sync.dag_defaults import START_DATE, default_args

if TYPE_CHECKING:
    from crm_sync.engine.context import RunSettings

log = logging.getLogger(__name__)

DOC = """### rebaseline

Run after the Dynamics org behind `dynamics_default` was refreshed from another environment (the
sync stops by itself with an alert when it sees a new organization id).

* `detect` reports the markers (organization id, linked ids that no longer resolve).
* `plan` always runs: it reads both systems, checks that the application user still sees about
  as many rows as last time (a narrowed security role hides rows without an error), and writes a
  dry-run report (`report.csv` under `mds_staging_path/rebaseline/<run>/`) listing every Marketo
  record the re-link would delete, flag as deleted or re-point. It writes nothing else.
* With **confirm**, `pause_sync` pauses every sync DAG, `relink` applies the plan and
  `unpause_sync` lets the DAGs run again. `relink` refuses unless `detect` found a refresh, and
  its deletes pass the sync DAGs' mass-delete guard (`mds_max_delete_share`,
  `mds_mass_delete_min_records`) unless **confirm_deletes** is set.

Params: **confirm** (false = report only), **confirm_deletes** (let a mass delete through, after
reading the report), **accept_row_counts** (the visible row counts changed on purpose),
**entities** (empty = all), **poll_seconds** (Marketo bulk export status poll).

Pausing and unpausing go through Airflow's REST API with the `airflow_api` connection.
"""


def _settings() -> RunSettings:
    from crm_sync.tasks.common import settings_from_airflow

    return settings_from_airflow(str(get_current_context()["run_id"]))


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


def entities_in() -> list[str]:
    return list(_params().get("entities") or [])


with DAG(
    dag_id="rebaseline",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1),
    tags=["marketo-dynamics-sync", "kind:maintenance", "entity:all"],
    doc_md=DOC,
    params={
        "confirm": Param(False, type="boolean", description="really re-link and reset"),
        "confirm_deletes": Param(False, type="boolean", description="let a mass delete through"),
        "accept_row_counts": Param(False, type="boolean", description="row counts changed on purpose"),
        "entities": Param([], type="array", items={"type": "string"}, description="entities (empty = all)"),
        "poll_seconds": Param(10.0, type="number", minimum=0.1, description="bulk export status poll"),
    },
) as dag:

    @task(task_id="detect")
    def detect() -> dict[str, Any]:
        from crm_sync.tasks.rebaseline import run_detect

        return run_detect(_settings(), entities_in())

    @task(task_id="pause_sync")
    def pause_sync() -> list[str]:
        from airflow.sdk.exceptions import AirflowSkipException

        from crm_sync.tasks.rebaseline import run_pause

        if not _params().get("confirm"):
            raise AirflowSkipException("confirm is false: report only")
        return run_pause(_settings(), True)

    @task(task_id="plan", pool="marketo_api", trigger_rule="none_failed")
    def plan() -> dict[str, Any]:
        from crm_sync.guards.variables import guard_settings
        from crm_sync.tasks.rebaseline import run_plan

        params = _params()
        return run_plan(
            _settings(),
            entities_in(),
            float(params.get("poll_seconds", 10.0)),
            tolerance=guard_settings().visibility_tolerance,
            accept_row_counts=bool(params.get("accept_row_counts")),
        )

    @task(task_id="relink", pool="marketo_api")
    def relink(detected: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from crm_sync.guards.variables import guard_settings
        from crm_sync.tasks.rebaseline import run_relink

        params = _params()
        if not params.get("confirm"):
            raise AirflowSkipException("confirm is false: report only")
        guards = guard_settings()
        return run_relink(
            _settings(),
            entities_in(),
            detected,
            confirm_deletes=bool(params.get("confirm_deletes")),
            max_share=guards.max_delete_share,
            min_records=guards.mass_delete_min_records,
        )

    @task(task_id="unpause_sync")
    def unpause_sync() -> list[str]:
        from crm_sync.tasks.rebaseline import run_pause

        return run_pause(_settings(), False)

    found = detect()
    planned = plan()
    done = relink(found)  # type: ignore[arg-type]  # an XComArg resolves to detect's dict
    found >> pause_sync() >> planned >> done >> unpause_sync()
