"""Helpers of the full-copy end-to-end tests: run the DAG, read both systems back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from tests.e2e.conftest import SyncEnv

FULL_COPY_FILE = Path(__file__).resolve().parents[2] / "dags" / "full_copy.py"


def full_copy_dag() -> DAG:
    """Parse ``dags/full_copy.py`` now (it reads ``$MDS_ENTITIES_DIR``) and return the DAG."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(FULL_COPY_FILE))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["full_copy"]


def run_full_copy(**conf: Any) -> Any:
    """One real ``dag.test()`` run of ``full_copy`` with ``conf`` as Params; must succeed."""
    run = full_copy_dag().test(run_conf=conf or None)
    assert run.state == "success", f"full_copy run ended {run.state}"
    return run


def ledger(env: SyncEnv, run_like: str = "full_copy%") -> dict[str, dict[str, int]]:
    """Ledger counts of the full-copy attempts, by entity (summed over attempts)."""
    out: dict[str, dict[str, int]] = {}
    with env.state().connect() as conn:
        rows = conn.execute(
            text("SELECT entity, extracted, loaded, failed, skipped FROM run_ledger WHERE run_id LIKE :r"),
            {"r": run_like},
        ).all()
    for entity, extracted, loaded, failed, skipped in rows:
        row = out.setdefault(entity, {"extracted": 0, "loaded": 0, "failed": 0, "skipped": 0})
        row["extracted"] += extracted
        row["loaded"] += loaded
        row["failed"] += failed
        row["skipped"] += skipped
    return out


def dynamics_rows(env: SyncEnv, entity_set: str, select: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Every row of a Dataverse table (through the Web API)."""
    hook = env.dyn()
    try:
        return [r for page in hook.query(entity_set, select=select, **kwargs) for r in page]
    finally:
        hook.close()


def marketo_objects(
    env: SyncEnv, object_name: str, key: str, values: list[str], fields: list[str]
) -> list[dict[str, Any]]:
    """Marketo records whose ``key`` is one of ``values`` (through the REST API)."""
    hook = env.mkto()
    try:
        return [r for page in hook.query_objects(object_name, key, values, fields) for r in page]
    finally:
        hook.close()
