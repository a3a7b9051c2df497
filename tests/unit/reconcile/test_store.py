"""Reconciliation reports in the state store: migration 0004 equals the models; save and reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crm_sync.reconcile.compare import DIFF_COLUMNS
from crm_sync.reconcile.core import Report
from crm_sync.reconcile.store import (
    ReconcileDifference,
    ReconcileRun,
    latest_run,
    load_differences,
    save_report,
)
from crm_sync.state import make_engine, session_scope, upgrade
from crm_sync.state.models import Base

MINE = {ReconcileRun.__tablename__, ReconcileDifference.__tablename__}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def _touches_mine(diff: Any) -> bool:
    for part in diff if isinstance(diff, list) else [diff]:
        for item in part[1:] if isinstance(part, tuple) else []:
            if isinstance(item, str):
                name: Any = item  # (op, schema, table name, column) entries name the table
            else:
                name = item.table.name if hasattr(item, "table") else getattr(item, "name", None)
            if name in MINE:
                return True
    return False


def test_migration_matches_the_models(engine: Any) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert [d for d in diffs if _touches_mine(d)] == []


def _report(rows: list[dict[str, Any]]) -> Report:
    report = Report(differences=pd.DataFrame(rows, columns=DIFF_COLUMNS))
    report.records = {"lead": {"dynamics": 10, "marketo": 11}}
    return report


def test_save_replaces_a_rerun_and_reloads_the_findings(engine: Any) -> None:
    first = _report([{"entity": "lead", "kind": "orphan", "dynamics_id": "g1", "marketo_id": "7"}])
    second = _report(
        [
            {
                "entity": "lead",
                "kind": "divergent",
                "dynamics_id": "g2",
                "marketo_id": "8",
                "field": "title",
                "dynamics_value": "A",
                "marketo_value": None,
            },
            {"entity": "lead", "kind": "missing_in_marketo", "dynamics_id": "g3"},
        ]
    )
    with session_scope(engine) as session:
        save_report(session, first, run_id="r1")
    with session_scope(engine) as session:
        run_pk = save_report(session, second, run_id="r1", csv_path="file:///x.csv", repaired=True)
    with session_scope(engine) as session:
        run = latest_run(session)
        assert run is not None
        assert (run.id, run.run_id, run.total, run.repaired, run.csv_path) == (
            run_pk,
            "r1",
            2,
            True,
            "file:///x.csv",
        )
        assert run.counts["findings"]["lead"]["divergent"] == 1
        assert run.counts["records"] == {"lead": {"dynamics": 10, "marketo": 11}}
        found = load_differences(session, run_pk)
        assert session.query(ReconcileRun).count() == 1
    assert found.to_dict("records") == [
        {
            "entity": "lead",
            "kind": "divergent",
            "dynamics_id": "g2",
            "marketo_id": "8",
            "field": "title",
            "dynamics_value": "A",
            "marketo_value": None,
        },
        {
            "entity": "lead",
            "kind": "missing_in_marketo",
            "dynamics_id": "g3",
            "marketo_id": None,
            "field": None,
            "dynamics_value": None,
            "marketo_value": None,
        },
    ]
