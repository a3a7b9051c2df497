"""Run ledger and conflict log writes are idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from crm_sync.state import RunCounts, conflict_rows, ledger_rows, log_conflicts, session_scope, write_ledger

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_ledger_row_is_overwritten_per_run_entity_direction(engine):
    counts = RunCounts(run_id="r1", entity="lead", direction="d2m", started_at=T0)
    with session_scope(engine) as s:
        write_ledger(s, counts)
    counts.status, counts.extracted, counts.loaded, counts.ended_at = "success", 10, 9, T0
    with session_scope(engine) as s:
        write_ledger(s, counts)
        write_ledger(s, RunCounts(run_id="r1", entity="lead", direction="m2d", started_at=T0))
    with session_scope(engine) as s:
        rows = ledger_rows(s, entity="lead")
    assert len(rows) == 2
    d2m = rows.set_index("direction").loc["d2m"]
    assert (d2m["status"], d2m["extracted"], d2m["loaded"], d2m["ended_at"]) == ("success", 10, 9, T0)


def test_conflicts_logged_once_per_run(engine):
    frame = pd.DataFrame(
        {
            "entity": ["lead"],
            "record_key": ["abc"],
            "field": ["title"],
            "marketo_value": ["CTO"],
            "dynamics_value": [None],
            "winner": ["marketo"],
        }
    )
    with session_scope(engine) as s:
        assert log_conflicts(s, frame, run_id="r1") == 1
        log_conflicts(s, frame, run_id="r1")
        log_conflicts(s, frame.iloc[0:0], run_id="r1")
    with session_scope(engine) as s:
        rows = conflict_rows(s, entity="lead")
    assert rows[["record_key", "field", "marketo_value", "dynamics_value", "winner"]].values.tolist() == [
        ["abc", "title", "CTO", None, "marketo"]
    ]
