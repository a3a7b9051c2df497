"""The status view's figures, computed with real SQL on a migrated SQLite state store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crm_sync.state import (
    RunCounts,
    make_engine,
    parked_errors,
    record_errors,
    resolve_errors,
    session_scope,
    set_watermark,
    upgrade,
    write_ledger,
)
from crm_sync.state.guards import add_api_calls
from crm_sync.status import entity_status, error_list, format_age, quota_usage, requeue

NOW = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)  # 04:00 in Chicago (CST, UTC-6)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def _run(
    s: Session, run_id: str, entity: str, direction: str, status: str, ended_ago: timedelta, **counts: int
) -> None:
    ended = NOW - ended_ago
    write_ledger(
        s,
        RunCounts(
            run_id=run_id,
            entity=entity,
            direction=direction,
            status=status,
            started_at=ended - timedelta(minutes=2),
            ended_at=ended,
            **counts,
        ),
    )


def _errors(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "entity": e,
                "direction": d,
                "record_id": rid,
                "field": "email",
                "code": code,
                "reason": f"bad {rid}",
            }
            for e, d, rid, code in rows
        ]
    )


def _seed(engine: Engine) -> None:
    with session_scope(engine) as s:
        _run(s, "r1", "lead", "both", "success", timedelta(days=2), loaded=100)
        _run(s, "r2", "lead", "both", "success", timedelta(minutes=30), loaded=5, failed=1)
        _run(s, "r3", "lead", "both", "failed", timedelta(minutes=10), loaded=2)
        _run(s, "r4", "account", "d2m", "success", timedelta(hours=3), loaded=7)
        _run(s, "r0", "retired", "d2m", "success", timedelta(days=9), loaded=1)
        set_watermark(s, "lead", "d2m", "delta-1", now=NOW - timedelta(minutes=30))
        set_watermark(s, "lead", "m2d", "2026-01-15T09:00:00Z", now=NOW - timedelta(minutes=40))
        set_watermark(s, "_person_feed", "m2d", "token", now=NOW - timedelta(days=5))
        set_watermark(s, "account", "d2m", "delta-2", now=NOW - timedelta(hours=3))
        record_errors(
            s,
            _errors(
                [("lead", "d2m", "a", "invalid"), ("lead", "m2d", "b", "invalid"), ("lead", "m2d", "c", "x")]
            ),
            run_id="r2",
            now=NOW - timedelta(minutes=30),
        )
        record_errors(s, _errors([("account", "d2m", "k", "dup")]), run_id="r4", now=NOW - timedelta(hours=3))
        resolve_errors(s, "account", "d2m", ["k"], now=NOW - timedelta(hours=1))


def _park(engine: Engine, source_id: str) -> None:
    from sqlalchemy import update

    from crm_sync.state.models import RecordError

    with session_scope(engine) as s:
        s.execute(
            update(RecordError)
            .where(RecordError.source_id == source_id)
            .values(parked=True, next_attempt_at=None)
        )


def test_entity_status_per_entity_and_direction(engine: Engine) -> None:
    _seed(engine)
    _park(engine, "a")
    with session_scope(engine) as s:
        rows = entity_status(s, {"lead": "both", "account": "d2m", "user": "d2m"}, now=NOW)
    by_key = {(r["entity"], r["direction"]): r for r in rows}
    assert list(by_key) == [("account", "d2m"), ("lead", "both"), ("retired", "d2m"), ("user", "d2m")]

    lead = by_key[("lead", "both")]
    assert lead["last_success_run_id"] == "r2"
    assert lead["last_success_at"] == (NOW - timedelta(minutes=30)).isoformat()
    assert (lead["last_run_status"], lead["last_run_at"]) == (
        "failed",
        (NOW - timedelta(minutes=10)).isoformat(),
    )
    # r1 ended two days ago: outside both windows; r2 and r3 ended within the hour.
    assert (lead["synced_last_hour"], lead["synced_last_day"], lead["failed_last_day"]) == (7, 7, 1)
    assert [(w["direction"], w["lag_seconds"]) for w in lead["watermarks"]] == [
        ("d2m", 1800.0),
        ("m2d", 2400.0),
    ]
    assert lead["lag_seconds"] == 2400.0
    assert (lead["errors_retrying"], lead["errors_parked"]) == (2, 1)

    account = by_key[("account", "d2m")]
    assert (account["synced_last_hour"], account["synced_last_day"]) == (0, 7)
    assert account["lag_seconds"] == 3 * 3600.0
    assert (account["errors_retrying"], account["errors_parked"]) == (0, 0)  # its only error was resolved
    assert account["configured"] is True

    # Configured but never run: a row with nothing in it. In the ledger only: shown, not configured.
    user = by_key[("user", "d2m")]
    assert (user["last_success_at"], user["lag_seconds"], user["watermarks"], user["synced_last_day"]) == (
        None,
        None,
        [],
        0,
    )
    assert by_key[("retired", "d2m")]["configured"] is False
    assert not any(r["entity"].startswith("_") for r in rows)


def test_entity_status_rejects_an_unknown_direction(engine: Engine) -> None:
    with session_scope(engine) as s, pytest.raises(ValueError, match="entity 'lead': direction 'sideways'"):
        entity_status(s, {"lead": "sideways"}, now=NOW)


def test_quota_counts_marketo_calls_since_midnight_us_central(engine: Engine) -> None:
    day_start = datetime(2026, 1, 15, 6, 0, tzinfo=UTC)  # 00:00 CST (UTC-6) on NOW's day
    with session_scope(engine) as s:
        for run_id, stage, at, calls in (
            ("before", "load", day_start - timedelta(seconds=1), {"marketo": 400}),
            ("at", "load", day_start, {"marketo": 120, "dynamics": 999}),
            ("later", "extract_changes", NOW - timedelta(minutes=5), {"marketo": 30}),
        ):
            add_api_calls(s, run_id=run_id, entity="lead", stage=stage, calls=calls, at=at)
    with session_scope(engine) as s:
        usage = quota_usage(s, daily_quota=1000, reserve_share=0.2, now=NOW)
        tomorrow = quota_usage(s, daily_quota=1000, now=NOW + timedelta(days=1))
        # Summer time: the quota day starts at 05:00 UTC.
        summer = quota_usage(s, daily_quota=1000, now=datetime(2026, 7, 1, 4, 59, tzinfo=UTC))
    # Dataverse calls do not count against Marketo's quota; yesterday's calls neither.
    assert (usage["used_today"], usage["reserve"], usage["usable"], usage["left"]) == (150, 200, 800, 650)
    assert (usage["percent"], usage["day_start"]) == (15.0, "2026-01-15T06:00:00+00:00")
    assert usage["used_by_entity"] == {"lead": 150}
    assert (tomorrow["used_today"], summer["day_start"]) == (0, "2026-06-30T05:00:00+00:00")
    with session_scope(engine) as s, pytest.raises(ValueError, match="daily quota"):
        quota_usage(s, daily_quota=-1, now=NOW)
    with session_scope(engine) as s, pytest.raises(ValueError, match="reserve share"):
        quota_usage(s, reserve_share=1.5, now=NOW)


def test_error_list_parked_first_with_reasons_and_total(engine: Engine) -> None:
    _seed(engine)
    _park(engine, "c")
    with session_scope(engine) as s:
        rows, total = error_list(s)
        first_only, same_total = error_list(s, limit=1)
        accounts, none = error_list(s, entity="account")
    assert total == same_total == 3  # the resolved account error is not listed
    assert [(r["source_id"], r["parked"]) for r in rows] == [("c", True), ("b", False), ("a", False)]
    assert (rows[0]["message"], rows[0]["field"], rows[0]["code"]) == ("bad c", "email", "x")
    assert [r["source_id"] for r in first_only] == ["c"]
    assert (accounts, none) == ([], 0)


def test_requeue_unparks_only_the_chosen_parked_errors(engine: Engine) -> None:
    _seed(engine)
    for sid in ("a", "b", "c"):
        _park(engine, sid)
    with session_scope(engine) as s:
        assert requeue(s, entity="lead", direction="m2d", source_ids=["b", " "], now=NOW) == 1
    with session_scope(engine) as s:
        assert sorted(parked_errors(s)["source_id"]) == ["a", "c"]
        assert requeue(s, entity="lead", known_entities=["lead", "account"], now=NOW) == 2
    with session_scope(engine) as s:
        assert parked_errors(s).empty
        rows, _ = error_list(s)
    b = next(r for r in rows if r["source_id"] == "b")
    assert (b["parked"], b["attempts"], b["next_attempt_at"]) == (False, 0, NOW.isoformat())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "both"}, "direction 'both' is not one of"),
        ({"entity": "nope", "known_entities": ["lead"]}, "entity 'nope' is not a configured entity"),
        ({"source_ids": ["x"]}, "needs their entity"),
    ],
)
def test_requeue_rejects_bad_input(engine: Engine, kwargs: dict[str, object], message: str) -> None:
    with session_scope(engine) as s, pytest.raises(ValueError, match=message):
        requeue(s, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.4, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3900, "1 h 5 min"),
        (93600, "1 d 2 h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text
