"""
### Check connections

Calls each configured API connection's `test_connection` (a real, cheap, authenticated call)
and fails with the reason when one does not answer. Run it after changing a connection; it
also runs hourly so an expired secret is noticed before a sync fails on it.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from crm_sync.dag_defaults import START_DATE, default_args

CONNECTIONS = ("marketo_default", "dynamics_default")


@dag(
    dag_id="check_connections",
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1),
    tags=["marketo-dynamics-sync", "kind:maintenance", "entity:all"],
    doc_md=__doc__,
)
def check_connections() -> None:
    @task
    def test_connection(conn_id: str) -> str:
        from crm_sync.health import check_connection

        return check_connection(conn_id)

    test_connection.expand(conn_id=list(CONNECTIONS))


check_connections()
