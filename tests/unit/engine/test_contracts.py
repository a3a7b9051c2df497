"""The stage hand-overs keep one JSON form, and a malformed one is named, field by field."""

from __future__ import annotations

import pytest

from crm_sync.engine.contracts import CommitSummary, ContractError, LoadBatch, LoadOutcome
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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "b", "links": {"path": "p", "rows": 1}}, "load batch has no 'ops'"),
        ({"name": "b", "ops": {"path": "p"}, "links": {"path": "p", "rows": 1}}, "not a batch reference"),
        (
            {"name": "b", "ops": {"path": "p", "rows": 1}, "links": {"path": "p", "rows": 1}, "records": "x"},
            "'records' is not a whole number",
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
