"""
### Check connections

Checks that both systems hold everything the entity files need (`check_setup`: the same
table as `python -m crm_sync.setup check`; it fails naming each missing field, column,
change-tracking switch or privilege and its fix), and beside it calls each configured API
connection's `test_connection` (a real, cheap, authenticated call), which fails with the reason
when one does not answer. Run it after changing a connection or the entity files; it also runs hourly so an
expired secret or a changed security role is noticed before a sync fails on it.
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
    def check_setup() -> dict[str, object]:
        from airflow.sdk import get_current_context

        from crm_sync.tasks.common import settings_from_airflow
        from crm_sync.tasks.setup import check_setup

        marketo, dynamics = CONNECTIONS
        settings = settings_from_airflow(
            str(get_current_context()["run_id"]), marketo_conn_id=marketo, dynamics_conn_id=dynamics
        )
        return check_setup(settings)

    @task
    def test_connection(conn_id: str) -> str:
        from crm_sync.health import check_connection

        return check_connection(conn_id)

    # Side by side, not in a chain: each is a leaf, so the run fails when either fails (a failed
    # task upstream of a successful leaf would leave the run green), and a connection that does
    # not answer fails only test_connection (check_setup leaves that system out).
    check_setup()
    test_connection.expand(conn_id=list(CONNECTIONS))


check_connections()
