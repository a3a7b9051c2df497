"""``airflow backfill create`` over three months copies exactly the records created in them.

A real Airflow (``airflow standalone``'s components through ``crm_sync.local_airflow``: scheduler,
DAG processor, API server, on its own SQLite metadata DB, every listener on 127.0.0.1) runs the
backfill that the CLI creates, one run per month with
its data interval, as a user would. Users and teams are copied first by a manual run (a backfill
re-copies history after the first copy, so the people records point at exist). Afterwards, for
every other entity, Marketo holds exactly the Dynamics records created in the window that pass
the sync filter (less any reported as record errors), and none created outside it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from crm_sync.config import load_entities
from crm_sync.engine.load import marketo_object_path
from tests.e2e.backfill_support import run_backfill, run_types, standalone_airflow
from tests.e2e.full_copy_support import dynamics_rows, marketo_objects, run_full_copy
from tests.support.slots import stack_marks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.conftest import SyncEnv

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    *stack_marks(minutes=3),  # standalone's start, then three monthly full_copy runs
]

WINDOW = (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
PRIMED = ("user", "team")


def _created(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["createdon"]).replace("Z", "+00:00"))


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 2000}], indirect=True)
def test_backfill_of_three_months_copies_exactly_the_records_created_in_them(
    sync_env: SyncEnv, tmp_path: Path, stack_slot_held: int
) -> None:
    entities = load_entities(sync_env.entities_dir)
    run_full_copy(entities=list(PRIMED))

    with standalone_airflow(tmp_path) as airflow:
        runs = run_backfill(airflow, "full_copy", "2025-04-01", "2025-06-01", 3)
    assert [state for _, state, _, _ in runs] == ["success"] * 3, runs
    # Unpaused for the backfill, yet never scheduled a copy of its own (BackfillOnlyCronTimetable).
    assert run_types(airflow.db, "full_copy") == ["backfill"] * 3
    starts = [datetime.fromisoformat(str(s)).replace(tzinfo=UTC) for _, _, s, _ in runs]
    assert [d.date().isoformat() for d in starts] == ["2025-04-01", "2025-05-01", "2025-06-01"]

    with sync_env.state().connect() as conn:
        errors = {
            (e, str(i).lower())
            for e, i in conn.execute(
                text("SELECT entity, source_id FROM record_error WHERE resolved_at IS NULL")
            )
        }
    copied_any = 0
    for name, entity in entities.items():
        if name in PRIMED:
            continue
        key = entity.dynamics.key
        select = [key, "createdon"] + (["new_synctomkto"] if entity.dynamics.filter_column else [])
        rows = dynamics_rows(sync_env, entity.dynamics.entity_set, select)
        inside = {
            str(r[key]).lower()
            for r in rows
            if WINDOW[0] <= _created(r) < WINDOW[1] and r.get("new_synctomkto") is not False
        }
        expected = inside - {i for e, i in errors if e == name}
        found = marketo_objects(
            sync_env,
            marketo_object_path(entity),
            entity.marketo.key,
            [str(r[key]) for r in rows],
            [entity.marketo.key],
        )
        keys = [str(r[entity.marketo.key]).lower() for r in found]
        assert len(keys) == len(set(keys)), f"{name}: duplicates"
        assert set(keys) == expected, (
            f"{name}: {len(set(keys) - expected)} extra, {len(expected - set(keys))} missing"
        )
        if name in ("account", "contact", "lead"):
            assert len(expected) >= len(inside) * 0.9, f"{name}: the window was copied"
        copied_any += len(expected)
    assert copied_any > 100, json.dumps(sorted(errors)[:5])
