"""Helpers of the activity end-to-end tests: the activity DAGs, history laid down, timeline reads."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from tests.e2e.conftest import SyncEnv

ACTIVITY_DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "sync_activities.py"
# Marketo's standard activity type ids, as the emulator's types.json lists them (tests only: the
# sync resolves the YAML's names through the types endpoint).
VISIT, FORM, SEND, DELIVERED, OPEN, CLICK, MOMENT = 1, 2, 6, 7, 10, 11, 46


def activity_dag(dag_id: str) -> DAG:
    """Parse ``dags/sync_activities.py`` now and return one of its DAGs."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ACTIVITY_DAG_FILE))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[dag_id]


def run_activities(dag_id: str = "sync_activities", logical_date: datetime | None = None) -> Any:
    """One real ``dag.test()`` run (at ``logical_date``: its data interval); must succeed."""
    kwargs: dict[str, Any] = {"logical_date": logical_date} if logical_date else {}
    run = activity_dag(dag_id).test(**kwargs)
    assert run.state == "success", f"{dag_id} run ended {run.state}"
    return run


def add_activities(env: SyncEnv, items: list[tuple[int, int, str, str]]) -> None:
    """Lay down Marketo activities ``(leadId, typeId, ISO date, primary value)`` as history."""
    body = {
        "activities": [
            {
                "leadId": lead,
                "activityTypeId": kind,
                "activityDate": when,
                "primaryAttributeValue": primary,
                "primaryAttributeValueId": 1,
                "attributes": {"Device": "Laptop", "Description": f"moment {primary}"},
            }
            for lead, kind, when, primary in items
        ]
    }
    resp = env.marketo.admin("POST", "activities", json=body)
    assert resp.status_code == 200, resp.text


def timeline(env: SyncEnv, guid: str) -> list[dict[str, Any]]:
    """The activity pointers regarding one Dataverse record (its timeline)."""
    hook = env.dyn()
    try:
        pages = hook.query(
            "activitypointers",
            select=["activityid", "subject", "activitytypecode", "actualstart"],
            filter=f"_regardingobjectid_value eq {guid}",
        )
        return [r for page in pages for r in page]
    finally:
        hook.close()


def activity_rows(env: SyncEnv) -> list[dict[str, Any]]:
    """Every row of the Marketo activity table."""
    hook = env.dyn()
    try:
        pages = hook.query(
            "new_marketoactivities",
            select=["new_marketoactivityid", "new_marketoleadid", "new_activitytypeid", "actualstart"],
        )
        return [r for page in pages for r in page]
    finally:
        hook.close()


def marketo_ids(env: SyncEnv, guids: list[str]) -> dict[str, int]:
    """Marketo person id per Dataverse GUID (``externalPersonId``)."""
    hook = env.mkto()
    try:
        pages = hook.get_leads("externalPersonId", guids, ["id", "externalPersonId"])
        return {str(p["externalPersonId"]): int(p["id"]) for page in pages for p in page}
    finally:
        hook.close()
