"""Record errors: attempts, exponential backoff, parking, re-queue and resolve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from crm_sync.state import (
    RetryPolicy,
    due_errors,
    open_errors,
    park_errors,
    parked_errors,
    record_errors,
    requeue_errors,
    resolve_errors,
    session_scope,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base=timedelta(minutes=1), cap=timedelta(minutes=10), max_attempts=4)


def _errors(ids=("r1",), field="lastname", code="FIELD_LENGTH"):
    return pd.DataFrame(
        {
            "entity": "lead",
            "direction": "m2d",
            "record_id": list(ids),
            "field": field,
            "code": code,
            "reason": "length 300 > 50",
        }
    )


def _record(engine, run, now, frame=None):
    with session_scope(engine) as s:
        record_errors(s, _errors() if frame is None else frame, run_id=run, policy=POLICY, now=now)


def _open(engine):
    with session_scope(engine) as s:
        return open_errors(s)


def test_first_failure_is_due_after_base_delay(engine):
    _record(engine, "run1", T0)
    row = _open(engine).iloc[0]
    assert (row["attempts"], row["field"], row["code"]) == (1, "lastname", "FIELD_LENGTH")
    assert row["next_attempt_at"] == T0 + timedelta(minutes=1)
    with session_scope(engine) as s:
        assert due_errors(s, now=T0).empty
        assert due_errors(s, now=T0 + timedelta(minutes=1))["source_id"].tolist() == ["r1"]


def test_same_run_twice_counts_one_attempt(engine):
    _record(engine, "run1", T0)
    _record(engine, "run1", T0 + timedelta(seconds=5))
    assert _open(engine)["attempts"].tolist() == [1]


def test_backoff_doubles_then_caps_then_parks(engine):
    delays = []
    for n in range(1, 5):
        now = T0 + timedelta(hours=n)
        _record(engine, f"run{n}", now)
        row = _open(engine).iloc[0]
        delays.append(None if row["parked"] else row["next_attempt_at"] - now)
    assert delays == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4), None]
    with session_scope(engine) as s:
        assert parked_errors(s)["attempts"].tolist() == [4]
        assert due_errors(s, now=T0 + timedelta(days=9)).empty


def test_cap_applies():
    assert POLICY.delay(10) == timedelta(minutes=10)


def test_requeue_unparks_and_makes_due(engine):
    for n in range(4):
        _record(engine, f"run{n}", T0)
    with session_scope(engine) as s:
        assert requeue_errors(s, entity="lead", now=T0) == 1
    with session_scope(engine) as s:
        assert parked_errors(s).empty
        due = due_errors(s, now=T0)
    assert due["source_id"].tolist() == ["r1"]
    assert due["attempts"].tolist() == [0]


def test_park_now(engine):
    _record(engine, "run1", T0)
    with session_scope(engine) as s:
        assert park_errors(s, "lead", "m2d", ["r1"]) == 1
        assert parked_errors(s)["source_id"].tolist() == ["r1"]


def test_resolve_closes_all_fields_of_a_record(engine):
    _record(
        engine,
        "run1",
        T0,
        pd.concat([_errors(["r1", "r2"]), _errors(["r1"], "emailaddress1", "INVALID_EMAIL")]),
    )
    with session_scope(engine) as s:
        assert resolve_errors(s, "lead", "m2d", ["r1"], now=T0) == 2
    assert _open(engine)["source_id"].tolist() == ["r2"]


def test_failure_after_resolution_starts_a_new_count(engine):
    _record(engine, "run1", T0)
    _record(engine, "run2", T0)
    with session_scope(engine) as s:
        resolve_errors(s, "lead", "m2d", ["r1"])
    _record(engine, "run3", T0)
    assert _open(engine)["attempts"].tolist() == [1]


def test_several_reasons_for_one_key_are_kept(engine):
    frame = pd.concat([_errors(), _errors().assign(reason="another reason")])
    _record(engine, "run1", T0, frame)
    assert _open(engine)["message"].tolist() == ["length 300 > 50; another reason"]


def test_a_load_settling_thousands_of_records_resolves_exactly_their_open_errors(engine):
    from crm_sync.state.errors import OPEN_LOOKUP_FROM, retry_now

    frame = _errors(["r1", "r2", "r3"])
    other = frame.assign(entity="contact")  # same ids, another entity: left open
    _record(engine, "run1", T0, pd.concat([frame, other]))
    settled = [f"x{i}" for i in range(OPEN_LOOKUP_FROM + 500)] + ["r1", "r3"]
    with session_scope(engine) as s:
        park_errors(s, "lead", "m2d", ["r3"])
        # Among thousands of ids, only the unparked open error is made due (a condition holds).
        assert retry_now(s, "lead", "m2d", settled, now=T0) == 1
        assert resolve_errors(s, "lead", "m2d", settled, now=T0) == 2
    still = _open(engine)
    assert sorted(zip(still["entity"], still["source_id"], strict=True)) == [
        ("contact", "r1"),
        ("contact", "r2"),
        ("contact", "r3"),
        ("lead", "r2"),
    ]
