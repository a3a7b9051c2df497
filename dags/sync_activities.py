"""Marketo activities on the Dynamics timeline (issue 20): ``sync_activities`` and
``sync_activities_history``.

Thin wiring only; the logic is :mod:`crm_sync.marketing.activity_run`, the mapping
``include/crm_sync/marketing/activities.yaml`` (which activity types, how each fills the custom
activity table ``new_marketoactivity``). Each Marketo activity of a mapped type becomes one row
regarding the synced lead or contact (through the id map), upserted by its Marketo activity id:
a re-run adds no rows. An activity whose person is not synced yet waits as a record error and is
retried by every later ``sync_activities`` run; it never creates the person.

Two DAGs, because a feed and a history need different timetables:

* **`sync_activities`** (the mapping file's ``schedule``, hourly by default; no catch-up): new
  activities from Marketo's activity feed since the stored paging token. ``extract`` (budget check, read, map,
  stage Parquet batches of up to 1,000) → ``load`` (mapped, one ``$batch`` per batch) → ``commit``
  (advances the token only when every batch is loaded; writes the run ledger).
* **`sync_activities_history`** (backfill only, monthly data intervals, never scheduled): the
  activities created in the run's data interval, through Marketo's bulk activity export (one job
  per interval: a month is at most 31 days). ``airflow backfill create --dag-id
  sync_activities_history --from-date 2025-01-01 --to-date 2025-03-01`` brings January to March.
  The bytes exported per quota day are kept and logged against ``mds_marketo_export_daily_mb``
  (500 MB, Marketo's default); a run over it is deferred. The job's status is polled every
  ``mds_activity_export_poll_seconds`` (30; each poll is a Marketo call).

**Quota**: both draw from the Marketo daily budget and the Dataverse window of the entity DAGs,
at a lower priority: a run that would leave less than ``mds_quota_low_priority_headroom`` of the
usable budget is deferred (skipped, ledger status ``deferred``) before it spends a call, so the
person syncs keep their share.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, get_current_context, task

from crm_sync.dag_defaults import START_DATE, default_args
from crm_sync.marketing.activity_config import load_activities
from crm_sync_timetables.backfill_only import BackfillOnlyCronTimetable

log = logging.getLogger(__name__)

MARKETO_POOL = "marketo_api"
DYNAMICS_POOL = "dynamics_api"
HISTORY_START = datetime(2000, 1, 1, tzinfo=UTC)
TAGS = ["marketo-dynamics-sync", "direction:m2d", "entity:activity"]


def _settings() -> Any:
    from crm_sync.tasks.common import settings_from_airflow

    return settings_from_airflow(str(get_current_context()["run_id"]))


def _skip_if_deferred(exc: Exception) -> Exception:
    from airflow.sdk.exceptions import AirflowSkipException

    from crm_sync.guards.quota import QuotaDeferred

    return AirflowSkipException(str(exc)) if isinstance(exc, QuotaDeferred) else exc


def _build(dag_id: str, history: bool, schedule: str) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=BackfillOnlyCronTimetable("0 0 1 * *", timezone="UTC") if history else schedule,
        start_date=HISTORY_START if history else START_DATE,
        catchup=False,
        max_active_runs=2 if history else 1,
        default_args=default_args(),
        tags=[*TAGS, "kind:history" if history else "kind:incremental"],
        doc_md=__doc__,
    ) as dag:

        @task(task_id="extract", pool=MARKETO_POOL)
        def extract() -> list[dict[str, Any]]:
            from crm_sync.guards.quota import QuotaDeferred
            from crm_sync.guards.variables import guard_settings, number_variable
            from crm_sync.tasks.activities import run_extract

            window = job = None
            if history:
                context = get_current_context()
                start, end = context["data_interval_start"], context["data_interval_end"]
                if start is None or end is None:
                    raise ValueError("sync_activities_history needs a run with a data interval")
                window = (start, end)
                poll = number_variable("mds_activity_export_poll_seconds", float, 30.0)
                job = {"poll_seconds": poll, "first_poll_seconds": poll}
            try:
                result = run_extract(
                    _settings(),
                    guard_settings(),
                    window=window,
                    export_limit_mb=number_variable("mds_marketo_export_daily_mb", float, 500.0),
                    export_job=job,
                )
            except QuotaDeferred as exc:
                raise _skip_if_deferred(exc) from exc
            log.info("activities extracted: %s", result["counts"])
            return list(result["batches"])

        @task(task_id="load", pool=DYNAMICS_POOL)
        def load(batch: dict[str, Any]) -> dict[str, Any]:
            from crm_sync.tasks.activities import run_load

            return run_load(_settings(), batch)

        @task(task_id="commit", trigger_rule="none_failed_min_one_success")
        def commit() -> dict[str, Any]:
            from crm_sync.tasks.activities import run_commit

            return run_commit(_settings())

        batches = extract()
        load.expand(batch=batches) >> (done := commit())
        batches >> done
    return dag


# The mapping file is read at parse time for its schedule only: a broken file is this file's
# import error, naming the file and the key.
_SCHEDULE = load_activities().schedule
sync_activities = _build("sync_activities", history=False, schedule=_SCHEDULE)
sync_activities_history = _build("sync_activities_history", history=True, schedule=_SCHEDULE)
