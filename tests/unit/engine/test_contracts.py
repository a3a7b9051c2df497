"""The stage hand-overs keep one JSON form, and a malformed one is named, field by field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from crm_sync.engine.contracts import (
    CommitSummary,
    ContractError,
    DynamicsPart,
    ExtractManifest,
    FeedChunk,
    LoadBatch,
    LoadOutcome,
    MarketoPart,
)
from crm_sync.engine.staging import BatchRef


def test_a_load_batch_and_a_unit_round_trip_through_xcom() -> None:
    batch = LoadBatch(
        "batch-00000", BatchRef("file:///s/ops.parquet", 3), BatchRef("file:///s/links.parquet", 2)
    )
    assert batch.to_xcom() == {
        "name": "batch-00000",
        "ops": {"path": "file:///s/ops.parquet", "rows": 3},
        "links": {"path": "file:///s/links.parquet", "rows": 2},
    }
    assert LoadBatch.from_xcom(batch.to_xcom()) == batch
    unit = LoadBatch("unit-00001", batch.ops, batch.links, mode="bulk", lookup="email", records=3)
    assert LoadBatch.from_xcom(unit.to_xcom()) == unit
    named = LoadBatch(
        "unit-00002", batch.ops, batch.links, mode="bulk", records=3, columns=("email", "title")
    )
    assert named.to_xcom()["columns"] == ["email", "title"]
    assert LoadBatch.from_xcom(named.to_xcom()) == named


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "b", "links": {"path": "p", "rows": 1}}, "load batch has no 'ops'"),
        ({"name": "b", "ops": {"path": "p"}, "links": {"path": "p", "rows": 1}}, "not a batch reference"),
        (
            {"name": "b", "ops": {"path": "p", "rows": 1}, "links": {"path": "p", "rows": 1}, "records": "x"},
            "'records' is not a whole number",
        ),
        (
            {
                "name": "b",
                "ops": {"path": "p", "rows": 1},
                "links": {"path": "p", "rows": 1},
                "columns": "email",
            },
            "'b': columns must be a list of field names",
        ),
    ],
)
def test_a_malformed_load_batch_is_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        LoadBatch.from_xcom(data)


def test_an_outcome_reads_back_its_staged_form_and_ignores_unit_timings() -> None:
    outcome = LoadOutcome("unit-00000", loaded=5, failed=1, calls={"marketo_upsert": 6})
    staged = {**outcome.to_xcom(), "seconds": 1.5, "mode": "bulk"}
    assert LoadOutcome.from_xcom(staged) == outcome
    with pytest.raises(ContractError, match="load outcome 'x' field 'loaded' is not a whole number"):
        LoadOutcome.from_xcom({"name": "x", "loaded": "many", "failed": 0})


def test_a_commit_summary_is_plain_json() -> None:
    summary = CommitSummary(2, 2, 1, 1, 0, 0, 0.5, 2.0, {"marketo": 1, "dynamics": 3})
    assert summary.to_xcom()["api_calls"] == {"marketo": 1, "dynamics": 3}
    assert summary.to_xcom()["records_per_second"] == 2.0


def _extract_manifest() -> ExtractManifest:
    ref = BatchRef("file:///s/extract/dynamics-00000.parquet", 5000)
    return ExtractManifest(
        entity="lead",
        run_id="scheduled__2026-12-06T10:00:00+00:00",
        started_at="2026-12-06T10:00:01+00:00",
        pending={"d2m": "https://org/api/data/v9.2/leads?$deltatoken=9", "m2d": "TOKEN2"},
        dynamics=DynamicsPart(
            batches=(ref,), rows=5000, token="https://org/api/data/v9.2/leads?$deltatoken=9"
        ),
        marketo=MarketoPart(
            start="TOKEN1",
            token="TOKEN2",
            chunks=(
                FeedChunk(
                    (BatchRef("file:///f/p.parquet", 3),), 3, "2026-12-06T10:00:02+00:00", "TOKEN1", "TOKEN2"
                ),
                FeedChunk((BatchRef("file:///s/r.parquet", 1),), 1, "2026-12-06T10:00:03+00:00", retry=True),
            ),
            rows=4,
            fresh=True,
            retried=1,
        ),
        email_matches=BatchRef("file:///s/extract/email-matches.parquet", 0),
    )


def test_an_extract_manifest_round_trips_and_counts_what_was_read() -> None:
    manifest = _extract_manifest()
    data = manifest.to_xcom()
    assert data["dynamics"]["batches"] == [{"path": "file:///s/extract/dynamics-00000.parquet", "rows": 5000}]
    assert data["marketo"]["chunks"][1] == {
        "batches": [{"path": "file:///s/r.parquet", "rows": 1}],
        "rows": 1,
        "read_at": "2026-12-06T10:00:03+00:00",
        "retry": True,
    }
    assert ExtractManifest.from_xcom(data) == manifest
    assert ExtractManifest.from_xcom(manifest) is manifest
    assert manifest.rows_read() == 5004


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("started_at"), "extract manifest has no 'started_at'"),
        (lambda d: d["dynamics"].pop("rows"), r"extract manifest \(dynamics\) has no 'rows'"),
        (lambda d: d["marketo"]["chunks"][0].update(batches=[{"path": "p"}]), "feed chunk.*'batches'"),
        (lambda d: d["pending"].update(d2m=None), "has no token to store for d2m"),
    ],
)
def test_a_malformed_extract_manifest_is_named(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _extract_manifest().to_xcom()
    change(data)
    with pytest.raises(ContractError, match=message):
        ExtractManifest.from_xcom(data)
