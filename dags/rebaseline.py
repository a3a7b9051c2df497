"""``rebaseline``: start over cleanly after a Dynamics sandbox refresh (manual, with Params).

Thin wiring around :mod:`crm_sync.rebaseline`: ``detect`` reports the markers (organization id,
linked ids that no longer resolve); with ``confirm`` set, ``pause_sync`` pauses every sync DAG,
``relink`` re-points the Marketo records at the refreshed org's records (external id, then
email; objects keyed by vanished ids are re-created by the sync) and resets the state store's
identity and watermarks, and ``unpause_sync`` lets the sync DAGs run again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Param, get_current_context, task

from crm_sync.dag_defaults import START_DATE, default_args

if TYPE_CHECKING:
    from crm_sync.engine.runner import RunSettings

log = logging.getLogger(__name__)

DOC = """### rebaseline

Run after the Dynamics org behind `dynamics_default` was refreshed from another environment (the
sync stops by itself with an alert when it sees a new organization id).

* **confirm**: false = only report what `detect` finds; true = pause, re-link, reset, unpause.
* **entities**: entities to re-link (empty = all).
* **poll_seconds**: how often the Marketo bulk export's status is polled.

Pausing and unpausing go through Airflow's REST API with the `airflow_api` connection.
"""


def _settings() -> RunSettings:
    from crm_sync.engine.runner import settings_from_airflow

    return settings_from_airflow(str(get_current_context()["run_id"]))


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


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
        "entities": Param([], type="array", items={"type": "string"}, description="entities (empty = all)"),
        "poll_seconds": Param(10.0, type="number", minimum=0.1, description="bulk export status poll"),
    },
) as dag:

    @task(task_id="detect")
    def detect() -> dict[str, Any]:
        from crm_sync.rebaseline import run_detect

        return run_detect(_settings(), list(_params().get("entities") or []))

    @task(task_id="pause_sync")
    def pause_sync() -> list[str]:
        from airflow.sdk.exceptions import AirflowSkipException

        from crm_sync.rebaseline import run_pause

        if not _params().get("confirm"):
            raise AirflowSkipException("confirm is false: report only")
        return run_pause(_settings(), True)

    @task(task_id="relink", pool="marketo_api")
    def relink() -> dict[str, Any]:
        from crm_sync.rebaseline import run_relink

        params = _params()
        return run_relink(
            _settings(), list(params.get("entities") or []), float(params.get("poll_seconds", 10.0))
        )

    @task(task_id="unpause_sync")
    def unpause_sync() -> list[str]:
        from crm_sync.rebaseline import run_pause

        return run_pause(_settings(), False)

    detect() >> pause_sync() >> relink() >> unpause_sync()
