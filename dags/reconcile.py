"""``reconcile``: do Marketo and Dynamics really agree? Daily, and on demand with Params.

Thin wiring: the task calls :func:`crm_sync.tasks.reconcile.run_reconcile`, which reads both
systems (keys and mapped columns only), compares them per entity after mapping, stores the
report in the state store, writes ``differences.csv`` and ``report.html`` under the staging
path, re-queues the differing records into the next incremental runs when ``repair`` is set,
and fails (so the failure alert fires) when an entity's share of differing records exceeds
``threshold``.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from crm_sync.dag_defaults import START_DATE, default_args

log = logging.getLogger(__name__)

DOC = """### reconcile

Compares Marketo and Dynamics per entity (key sets, then a hash of the mapped fields) and reports
records missing on either side, orphans, duplicates both ways and divergent fields.

* **entities**: names to compare (empty = all entities).
* **repair**: re-queue the differing records into the next incremental runs (duplicate persons
  are unlinked at once; nothing is deleted).
* **threshold**: fail and alert when more than this share of an entity's records differ (0.01 = 1 %).
* **poll_seconds**: how often the Marketo bulk export's status is polled.

The report goes to the state store (`reconcile_run`, `reconcile_difference`) and to
`<mds_staging_path>/reconcile/<run>/differences.csv` and `report.html`.
"""

with DAG(
    dag_id="reconcile",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1),
    tags=["marketo-dynamics-sync", "kind:maintenance", "entity:all"],
    doc_md=DOC,
    params={
        "entities": Param([], type="array", items={"type": "string"}, description="entities (empty = all)"),
        "repair": Param(False, type="boolean", description="re-queue the differing records"),
        "threshold": Param(0.01, type="number", minimum=0, maximum=1, description="share that alerts"),
        "poll_seconds": Param(10.0, type="number", minimum=0.1, description="bulk export status poll"),
    },
) as dag:

    @task(task_id="reconcile", pool="marketo_api")
    def reconcile_task() -> dict[str, Any]:
        from crm_sync.tasks.common import settings_from_airflow
        from crm_sync.tasks.reconcile import run_reconcile

        ctx = get_current_context()
        params = ctx["params"]
        settings = settings_from_airflow(str(ctx["run_id"]))
        result = run_reconcile(
            settings,
            list(params.get("entities") or []),
            repair=bool(params.get("repair")),
            threshold=float(params.get("threshold", 0.01)),
            poll_seconds=float(params.get("poll_seconds", 10.0)),
        )
        log.info("reconcile: %s", result)
        return result

    reconcile_task()
