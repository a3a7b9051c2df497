"""The status view's figures, computed with real SQL on a migrated state store (SQLite, and
PostgreSQL when it answers on 127.0.0.1:5432)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crm_sync.state import (
    RunCounts,
    make_engine,
    record_errors,
    resolve_errors,
    session_scope,
    set_watermark,
    upgrade,
    write_ledger,
)
from crm_sync.state.backlog import record_peek
from crm_sync.state.guards import add_api_calls
from crm_sync.state.membership import add_pending
from crm_sync.state.models import Base, RecordError
from crm_sync.status import (
    ErrorFilter,
    entity_status,
    error_facets,
    error_list,
    format_age,
    iter_errors,
    quota_usage,
    requeue_matching,
)
from crm_sync.status_charts import add_console_columns, calls_today, chart_series, peek_calls_today
from tests.unit.state.conftest import pg_url  # noqa: F401 - the session's throwaway PostgreSQL database

NOW = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)  # 04:00 in Chicago (CST, UTC-6)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty state store on each backend."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        upgrade(eng)
    else:
        eng = make_engine(request.getfixturevalue("pg_url"))
        with eng.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
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


@pytest.mark.parametrize(
    ("seconds", "shown"),
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
def test_format_age(seconds: float | None, shown: str) -> None:
    assert format_age(seconds) == shown


# --- the error filter the page, the CSV export and the re-queue share ------------------------------


def _error_rows(rows: list[tuple[str, str, str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"entity": e, "direction": d, "record_id": rid, "field": f, "code": c, "reason": msg}
            for e, d, rid, f, c, msg in rows
        ]
    )


FILTER_SEED = [
    ("lead", "d2m", "L-1", "emailaddress1", "INVALID_EMAIL", "not a valid email address"),
    ("lead", "d2m", "L-2", "lastname", "FIELD_LENGTH", "longer than 50 characters"),
    ("lead", "m2d", "1001", "email", "INVALID_EMAIL", "100% not an email"),
    ("contact", "d2m", "C-1", "emailaddress1", "INVALID_EMAIL", "not a valid email address"),
    ("account", "d2m", "A-1", "", "DUPLICATE_CANDIDATES", "two accounts share the name ACME_1"),
]


def _seed_filter(engine: Engine) -> None:
    with session_scope(engine) as s:
        record_errors(s, _error_rows(FILTER_SEED), run_id="r1", now=NOW - timedelta(hours=1))
    for sid in ("L-1", "C-1"):
        _park(engine, sid)


def _snapshot(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(
                RecordError.source_id, RecordError.parked, RecordError.attempts, RecordError.next_attempt_at
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (ErrorFilter(), {"L-1", "L-2", "1001", "C-1", "A-1"}),
        (ErrorFilter(code="INVALID_EMAIL"), {"L-1", "1001", "C-1"}),
        (ErrorFilter(entity="lead", field="emailaddress1"), {"L-1"}),
        (ErrorFilter(entity="lead", direction="m2d"), {"1001"}),
        (ErrorFilter(state="parked"), {"L-1", "C-1"}),
        (ErrorFilter(state="retrying", code="INVALID_EMAIL"), {"1001"}),
        (ErrorFilter(search="l-"), {"L-1", "L-2"}),  # record id, case-insensitive
        (ErrorFilter(search="ACME_"), {"A-1"}),  # message text
        (ErrorFilter(search="100%"), {"1001"}),  # LIKE wildcards are literal text
        (ErrorFilter(search="_1"), {"A-1"}),
        (ErrorFilter(entity="lead", source_id="L-2"), {"L-2"}),
        (ErrorFilter(entity="nobody"), set()),
    ],
)
def test_error_filter_selects_by_text_entity_field_code_and_state(
    engine: Engine, flt: ErrorFilter, expected: set[str]
) -> None:
    _seed_filter(engine)
    with session_scope(engine) as s:
        rows, total = error_list(s, flt=flt)
        exported = list(iter_errors(s, flt, batch=2))
    assert {r["source_id"] for r in rows} == expected
    assert total == len(expected)
    assert exported == rows  # the export pages through the same rows in the same order


def test_error_filter_leaves_out_resolved_errors(engine: Engine) -> None:
    _seed_filter(engine)
    with session_scope(engine) as s:
        resolve_errors(s, "lead", "d2m", ["L-2"], now=NOW)
    with session_scope(engine) as s:
        rows, total = error_list(s, flt=ErrorFilter(entity="lead", direction="d2m"))
        facets = error_facets(s)
    assert ([r["source_id"] for r in rows], total) == (["L-1"], 1)
    assert facets == {
        "entities": ["account", "contact", "lead"],
        "fields": ["email", "emailaddress1"],  # L-2's lastname is resolved; "" is no field
        "codes": ["DUPLICATE_CANDIDATES", "INVALID_EMAIL"],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "both"}, "direction 'both' is not one of"),
        ({"state": "stuck"}, "state 'stuck' is not one of"),
        ({"search": "x" * 201}, "longer than 200 characters"),
        ({"source_id": "L-1"}, "a record id needs its entity"),
    ],
)
def test_error_filter_rejects_bad_input(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ErrorFilter(**kwargs)


def test_requeue_of_a_filter_requeues_exactly_that_set(engine: Engine) -> None:
    _seed_filter(engine)
    before = _snapshot(engine)
    flt = ErrorFilter(code="INVALID_EMAIL", entity="lead")  # L-1 parked, 1001 retrying
    with session_scope(engine) as s:
        counts = requeue_matching(s, flt, known_entities=["lead", "contact", "account"], now=NOW)
    after = _snapshot(engine)
    assert counts == {"parked": 1, "retrying": 1}
    changed = {sid for sid in before if before[sid] != after[sid]}
    assert changed == {"L-1", "1001"}
    parked, attempts, due = after["L-1"]
    assert (parked, attempts, as_utc_or_none(due)) == (False, 0, NOW)  # fresh attempt count
    parked, attempts, due = after["1001"]
    assert (parked, attempts, as_utc_or_none(due)) == (False, 1, NOW)  # due now, attempts kept
    assert after["C-1"][0] is True  # parked too, but another entity


def test_requeue_of_parked_only_leaves_retrying_errors_waiting(engine: Engine) -> None:
    _seed_filter(engine)
    before = _snapshot(engine)
    with session_scope(engine) as s:
        counts = requeue_matching(s, ErrorFilter(state="parked"), now=NOW)
    after = _snapshot(engine)
    assert counts == {"parked": 2, "retrying": 0}
    assert {sid for sid in before if before[sid] != after[sid]} == {"L-1", "C-1"}


def test_requeue_refuses_an_unknown_entity(engine: Engine) -> None:
    with session_scope(engine) as s, pytest.raises(ValueError, match="entity 'nope' is not a configured"):
        requeue_matching(s, ErrorFilter(entity="nope"), known_entities=["lead"])


def as_utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=UTC))


# --- backlog, calls today, deferred runs ------------------------------------------------------------


def test_backlog_and_calls_today_join_the_entity_rows(engine: Engine) -> None:
    _seed(engine)
    with session_scope(engine) as s:
        record_peek(
            s,
            entity="lead",
            direction="d2m",
            pending=4,
            oldest_change_at=NOW - timedelta(minutes=10),
            newest_change_at=NOW - timedelta(minutes=1),
            now=NOW,
        )
        record_peek(
            s,
            entity="lead",
            direction="m2d",
            pending=2,
            oldest_change_at=NOW - timedelta(minutes=3),
            newest_change_at=NOW,
            now=NOW,
        )
        record_peek(
            s,
            entity="account",
            direction="d2m",
            pending=0,
            oldest_change_at=None,
            newest_change_at=None,
            now=NOW,
        )
        record_peek(
            s,
            entity="opportunity",
            direction="d2m",
            pending=1,
            oldest_change_at=NOW - timedelta(seconds=30),
            newest_change_at=NOW,
            now=NOW,
        )
        waiting = _error_rows(
            [
                ("activity", "m2d", f"act-{i}", "leadId", "PERSON_NOT_SYNCED", "person not synced")
                for i in range(3)
            ]
        )
        record_errors(s, waiting, run_id="act-1", now=NOW - timedelta(hours=2))
        add_pending(
            s,
            [
                {
                    "direction": "m2d",
                    "program_id": 7,
                    "person_id": "55",
                    "campaign_id": "c",
                    "status": "Member",
                    "occurred_at": NOW - timedelta(minutes=50),
                },
                {
                    "direction": "m2d",
                    "program_id": 7,
                    "person_id": "56",
                    "campaign_id": "c",
                    "status": "Member",
                    "occurred_at": NOW - timedelta(minutes=20),
                },
            ],
        )
        _run(s, "act-d", "activity", "m2d", "deferred", timedelta(minutes=5))
        add_api_calls(
            s, run_id="p1", entity="lead", stage="peek", calls={"marketo": 6, "dynamics": 9}, at=NOW
        )
        add_api_calls(s, run_id="a1", entity="activity", stage="extract", calls={"marketo": 11}, at=NOW)
        add_api_calls(s, run_id="p2", entity="person_feed", stage="peek", calls={"marketo": 5}, at=NOW)
        add_api_calls(
            s, run_id="old", entity="lead", stage="load", calls={"marketo": 500}, at=NOW - timedelta(days=1)
        )
    configured = {"lead": "both", "account": "d2m", "activity": "m2d", "program_membership": "both"}
    with session_scope(engine) as s:
        rows = add_console_columns(s, entity_status(s, configured, now=NOW), now=NOW)
        calls = calls_today(s, now=NOW)
        peeks = peek_calls_today(s, now=NOW)
    by_key = {(r["entity"], r["direction"]): r for r in rows}

    lead = by_key[("lead", "both")]
    assert lead["backlog_pending"] == 6
    assert lead["backlog_oldest_age_seconds"] == 600.0
    assert [(b["direction"], b["pending"], b["source"]) for b in lead["backlog"]] == [
        ("d2m", 4, "peek"),
        ("m2d", 2, "peek"),
    ]
    assert lead["calls_today"] == {"marketo": 6, "dynamics": 9}  # yesterday's load is not today's
    account = by_key[("account", "d2m")]
    assert (account["backlog_pending"], account["backlog_oldest_age_seconds"]) == (0, None)
    assert by_key[("opportunity", "d2m")]["configured"] is False  # a backlog without a row gets one

    activity = by_key[("activity", "m2d")]
    assert (activity["kind"], activity["backlog_pending"], activity["backlog_oldest_age_seconds"]) == (
        "marketing",
        3,
        7200.0,
    )
    assert (activity["deferred_last_day"], activity["calls_today"]) == (1, {"marketo": 11, "dynamics": 0})
    membership = by_key[("program_membership", "both")]
    assert (membership["backlog_pending"], membership["backlog_oldest_age_seconds"]) == (2, 3000.0)
    assert membership["backlog"][0]["source"] == "membership_pending"
    assert calls == {
        "lead": {"marketo": 6, "dynamics": 9},
        "activity": {"marketo": 11, "dynamics": 0},
        "person_feed": {"marketo": 5, "dynamics": 0},
    }
    assert peeks == {"marketo": 11, "dynamics": 9}  # the lead watcher's and the person feed's


# --- chart series -----------------------------------------------------------------------------------


def _latency_run(s: Session, run_id: str, ended_ago: timedelta, p50: float | None, loaded: int = 1) -> None:
    ended = NOW - ended_ago
    write_ledger(
        s,
        RunCounts(
            run_id=run_id,
            entity="lead",
            direction="both",
            status="success",
            loaded=loaded,
            failed=1,
            started_at=ended - timedelta(minutes=1),
            ended_at=ended,
            latency_p50_s=p50,
            latency_p95_s=None if p50 is None else p50 * 3,
            latency_max_s=None if p50 is None else p50 * 4,
        ),
    )


def test_chart_series_records_per_hour_and_latency_per_run(engine: Engine) -> None:
    with session_scope(engine) as s:
        _latency_run(s, "now", timedelta(0), 12.0, loaded=10)  # 10:00, the current hour's bucket
        _latency_run(s, "same-hour", timedelta(minutes=40), 20.0, loaded=5)  # 09:20, the 09:00 bucket
        _latency_run(s, "no-latency", timedelta(hours=3), None, loaded=7)
        _latency_run(s, "three-days", timedelta(days=3), 30.0, loaded=100)
        _latency_run(s, "too-old", timedelta(days=8), 40.0, loaded=1000)
    with session_scope(engine) as s:
        charts = chart_series(s, usable_budget=800, daily_quota=1000, now=NOW)
    day, week = charts["ranges"]["24h"], charts["ranges"]["7d"]
    assert (len(day["synced"]), len(week["synced"])) == (24, 168)
    assert day["synced"][-1] == {"t": "2026-01-15T10:00:00+00:00", "loaded": 10, "failed": 1}
    assert day["synced"][-2] == {"t": "2026-01-15T09:00:00+00:00", "loaded": 5, "failed": 1}
    assert sum(b["loaded"] for b in day["synced"]) == 22
    assert sum(b["loaded"] for b in week["synced"]) == 122
    assert [(p["run_id"], p["p50"], p["p95"]) for p in day["latency"]] == [
        ("same-hour", 20.0, 60.0),
        ("now", 12.0, 36.0),
    ]
    assert [p["run_id"] for p in week["latency"]] == ["three-days", "same-hour", "now"]
    assert (day["start"], day["end"]) == ("2026-01-14T11:00:00+00:00", "2026-01-15T11:00:00+00:00")


def test_chart_series_latency_per_hour_when_runs_are_many(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crm_sync.status_charts

    monkeypatch.setattr(crm_sync.status_charts, "LATENCY_POINTS", 3)
    with session_scope(engine) as s:
        for i, (ago, p50) in enumerate([(5, 10.0), (15, 30.0), (25, 20.0), (65, 7.0)]):
            _latency_run(s, f"r{i}", timedelta(minutes=ago), p50)  # 09:55, 09:45, 09:35 and 08:55
    with session_scope(engine) as s:
        day = chart_series(s, usable_budget=1, daily_quota=1, now=NOW)["ranges"]["24h"]
    assert [(p["t"][11:16], p["runs"], p["p50"], p["p95"], p["max"]) for p in day["latency"]] == [
        ("08:00", 1, 7.0, 21.0, 28.0),
        ("09:00", 3, 20.0, 90.0, 120.0),  # median p50, highest p95 and max of the hour's runs
    ]
    assert day["latency"][1]["run_id"] is None


def test_chart_series_marketo_running_total_restarts_with_the_quota_day(engine: Engine) -> None:
    # NOW is 10:00 UTC; the quota day began at 06:00 UTC (midnight CST).
    with session_scope(engine) as s:
        for run_id, at, n in (
            ("y1", datetime(2026, 1, 14, 12, 30, tzinfo=UTC), 100),  # yesterday, before the 24 h window
            ("y2", datetime(2026, 1, 15, 3, 10, tzinfo=UTC), 40),  # yesterday's quota day, in the window
            ("t1", datetime(2026, 1, 15, 6, 0, tzinfo=UTC), 7),
            ("t2", datetime(2026, 1, 15, 9, 59, tzinfo=UTC), 3),
        ):
            add_api_calls(
                s, run_id=run_id, entity="lead", stage="load", calls={"marketo": n, "dynamics": 1}, at=at
            )
    with session_scope(engine) as s:
        charts = chart_series(s, usable_budget=800, daily_quota=1000, now=NOW)
    hours = {p["t"][11:16]: p for p in charts["ranges"]["24h"]["marketo"]}
    assert hours["03:00"] == {
        "t": "2026-01-15T03:00:00+00:00",
        "calls": 40,
        "cumulative": 140,
    }  # 100 earlier that day
    assert (hours["05:00"]["cumulative"], hours["06:00"]["calls"], hours["06:00"]["cumulative"]) == (
        140,
        7,
        7,
    )
    assert (hours["09:00"]["calls"], hours["09:00"]["cumulative"], hours["10:00"]["cumulative"]) == (
        3,
        10,
        10,
    )
    assert charts["marketo_usable"] == 800


def test_chart_series_dataverse_calls_per_five_minute_window(engine: Engine) -> None:
    with session_scope(engine) as s:
        for run_id, at, n in (
            ("a", datetime(2026, 1, 15, 9, 31, tzinfo=UTC), 100),
            ("b", datetime(2026, 1, 15, 9, 34, 59, tzinfo=UTC), 50),  # same window as "a"
            ("c", datetime(2026, 1, 15, 9, 35, tzinfo=UTC), 400),  # the next one
        ):
            add_api_calls(s, run_id=run_id, entity="lead", stage="load", calls={"dynamics": n}, at=at)
    with session_scope(engine) as s:
        charts = chart_series(s, usable_budget=0, daily_quota=0, dynamics_reserve_share=0.25, now=NOW)
    day, week = charts["ranges"]["24h"], charts["ranges"]["7d"]
    windows = {p["t"][11:16]: p["calls"] for p in day["dynamics"]}
    assert (len(day["dynamics"]), day["dynamics_step_seconds"]) == (288, 300)
    assert (windows["09:30"], windows["09:35"], windows["09:40"]) == (150, 400, 0)
    busiest = {p["t"][11:16]: p["calls"] for p in week["dynamics"][-24:]}
    assert (busiest["09:00"], week["dynamics_step_seconds"]) == (400, 3600)  # the hour's busiest window
    assert (charts["dynamics_window_limit"], charts["dynamics_window_share"]) == (6000, 4500)


def test_chart_series_rejects_bad_limits(engine: Engine) -> None:
    with session_scope(engine) as s, pytest.raises(ValueError, match="must not be negative"):
        chart_series(s, usable_budget=-1, daily_quota=0, now=NOW)
    with session_scope(engine) as s, pytest.raises(ValueError, match=r"reserve share must be in \[0, 1\)"):
        chart_series(s, usable_budget=1, daily_quota=1, dynamics_reserve_share=1.0, now=NOW)
