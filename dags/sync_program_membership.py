"""``sync_program_membership``: Marketo program membership ⇄ Dynamics campaigns (issue 20).

Thin wiring only: every task calls :mod:`crm_sync.tasks.membership`, imported inside the task.
The program ↔ campaign pairs and their status maps are data:
`include/crm_sync/marketing/programs.yaml` (or the file named by `$MDS_PROGRAMS_FILE`), which
also holds the DAG's ``schedule`` (hourly by default).

Run shape: `extract_changes` (budget check, then Marketo's "Change Status in Progression"
feed, or the bulk program-member export on the first run; Dataverse change tracking on
`campaignresponses` and `listmembers`; all staged as Parquet) → `load_to_dynamics` (list
members, removals, campaign responses) → `load_to_marketo` (program statuses the YAML allows,
removals) → `commit` (tokens stored only now, run ledger). A low-priority DAG: when the Marketo
budget left is under what the entity DAGs keep, the run is skipped (deferred), never the person sync.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import DAG, task

from crm_sync.dag_defaults import START_DATE, default_args
from crm_sync.marketing.program_config import load_programs

log = logging.getLogger(__name__)

MARKETO_POOL = "marketo_api"
DYNAMICS_POOL = "dynamics_api"


def _settings() -> Any:
    from airflow.sdk import get_current_context

    from crm_sync.tasks.common import settings_from_airflow

    return settings_from_airflow(str(get_current_context()["run_id"]))


def _deferred(exc: Exception) -> Exception:
    from airflow.sdk.exceptions import AirflowSkipException

    return AirflowSkipException(str(exc))


with DAG(
    dag_id="sync_program_membership",
    # The mapping file's schedule (hourly by default), read at parse time: a broken file is this
    # file's import error, naming the file and the key.
    schedule=load_programs().spec.schedule,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["marketo-dynamics-sync", "kind:incremental", "direction:both"],
    doc_md=__doc__,
) as dag:

    @task(task_id="extract_changes", pool=MARKETO_POOL)
    def extract_changes() -> dict[str, Any]:
        from crm_sync.guards.quota import QuotaDeferred
        from crm_sync.guards.variables import guard_settings
        from crm_sync.tasks.membership import run_extract

        try:
            counts = run_extract(_settings(), guard_settings())
        except QuotaDeferred as exc:
            raise _deferred(exc) from exc
        log.info("extracted: %s", counts)
        return counts

    @task(task_id="load_to_dynamics", pool=DYNAMICS_POOL)
    def load_to_dynamics() -> dict[str, int]:
        from crm_sync.tasks.membership import run_load_to_dynamics

        return run_load_to_dynamics(_settings())

    @task(task_id="load_to_marketo", pool=MARKETO_POOL)
    def load_to_marketo() -> dict[str, int]:
        from crm_sync.guards.quota import QuotaDeferred
        from crm_sync.guards.variables import guard_settings
        from crm_sync.tasks.membership import run_load_to_marketo

        try:
            return run_load_to_marketo(_settings(), guard_settings())
        except QuotaDeferred as exc:
            raise _deferred(exc) from exc

    @task(task_id="commit")
    def commit(to_dynamics: dict[str, int], to_marketo: dict[str, int]) -> dict[str, Any]:
        from crm_sync.tasks.membership import run_commit

        summary = run_commit(_settings(), dict(to_dynamics), dict(to_marketo))
        log.info("run: %s", summary)
        return summary

    dynamics_done = load_to_dynamics()
    marketo_done = load_to_marketo()
    extract_changes() >> dynamics_done >> marketo_done
    commit(dynamics_done, marketo_done)  # type: ignore[arg-type]  # XComArgs resolve to the dicts
