"""Repair on a real SQLite state store: which records are re-queued, which hashes are dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from crm_sync.config import ENTITIES_DIR, load_entities
from crm_sync.reconcile.compare import DIFF_COLUMNS
from crm_sync.reconcile.repair import REQUEUE_CODE, repair, settle_requeued
from crm_sync.state import (
    due_errors,
    lookup_links,
    make_engine,
    open_errors,
    session_scope,
    upgrade,
    upsert_links,
)

A, B, C = "guid-a", "guid-b", "guid-c"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def _diff(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in DIFF_COLUMNS} for r in rows])


def test_requeues_both_ways_drops_the_right_hashes_and_settles(engine: Any) -> None:
    entities = load_entities(ENTITIES_DIR)
    hashes = {"title": 1, "leadStatus": 2, "lastName": 3}
    with session_scope(engine) as s:
        upsert_links(
            s,
            "lead",
            [
                {"dynamics_id": d, "marketo_id": m, "field_hashes": hashes}
                for d, m in ((A, "7"), (B, "8"), (C, "9"))
            ],
        )
    found = _diff(
        [
            {"entity": "lead", "kind": "divergent", "dynamics_id": A, "marketo_id": "7", "field": "title"},
            {
                "entity": "lead",
                "kind": "divergent",
                "dynamics_id": A,
                "marketo_id": "7",
                "field": "leadStatus",
            },
            {"entity": "lead", "kind": "missing_in_marketo", "dynamics_id": B},
            {"entity": "lead", "kind": "orphan", "dynamics_id": C, "marketo_id": "9"},
            {"entity": "lead", "kind": "missing_in_dynamics", "marketo_id": "12"},
            {"entity": "lead", "kind": "duplicate_in_marketo", "dynamics_id": A, "marketo_id": "13"},
            {"entity": "lead", "kind": "duplicate_in_dynamics", "dynamics_id": A, "marketo_id": "7"},
            # A person flagged deleted while Dataverse still has the record: needs its flag cleared.
            {"entity": "lead", "kind": "missing_in_marketo", "dynamics_id": "guid-d", "marketo_id": "15"},
        ]
    )
    with session_scope(engine) as s:
        outcome = repair(s, entities, found, run_id="reconcile-1")
    assert outcome.requeued == {"lead": {"d2m": 4, "m2d": 2}}
    assert [(r["kind"], r["marketo_id"]) for r in outcome.skipped] == [
        ("duplicate_in_marketo", "13"),
        ("duplicate_in_dynamics", "7"),
        ("missing_in_marketo", "15"),
    ]
    with session_scope(engine) as s:
        due = due_errors(s, entity="lead")
        links = lookup_links(s, "lead").set_index("dynamics_id")
    assert sorted(zip(due["direction"], due["source_id"], due["code"], strict=True)) == [
        ("d2m", A, REQUEUE_CODE),
        ("d2m", B, REQUEUE_CODE),
        ("d2m", C, REQUEUE_CODE),
        ("d2m", "guid-d", REQUEUE_CODE),
        ("m2d", "12", REQUEUE_CODE),
        ("m2d", "7", REQUEUE_CODE),
    ]
    # leadStatus flows Dynamics -> Marketo only: its hash goes so the Dynamics value is re-sent;
    # title flows both ways: the merge decides by the stored hash, which stays.
    assert links.loc[A, "field_hashes"] == {"title": 1, "lastName": 3}
    assert links.loc[B, "field_hashes"] is None
    assert links.loc[C, "field_hashes"] == hashes

    # A later reconciliation where only B still differs resolves the others' re-queue errors.
    with session_scope(engine) as s:
        settle_requeued(
            s, "lead", _diff([{"entity": "lead", "kind": "missing_in_marketo", "dynamics_id": B}])
        )
    with session_scope(engine) as s:
        still = open_errors(s, entity="lead")
    assert list(still["source_id"]) == [B]
