"""The watchers' pace, the run shape a run's first task picks, and the latency summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_sync.engine.latency import combine, latency_seconds, summarize
from crm_sync.tasks.small_run import choose_shape, pending_from_events
from crm_sync.watch.policy import PollPolicy, next_interval

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


# --- pace ---------------------------------------------------------------------------------------


def test_fast_while_changes_flow_then_doubling_to_the_idle_ceiling() -> None:
    policy = PollPolicy(fast=10, idle_max=90)
    assert next_interval(policy, 90, saw_new=True) == 10
    waits, wait = [], 10.0
    for _ in range(5):
        wait = next_interval(policy, wait, saw_new=False)
        waits.append(wait)
    assert waits == [20, 40, 80, 90, 90]


def test_idle_polling_fits_the_daily_budget_and_bursts_spend_only_the_rest() -> None:
    # 2,500 calls a day: idle at 90 s costs 960, so a fresh day leaves room to poll fast.
    policy = PollPolicy(fast=10, idle_max=90, daily_budget=2_500)
    assert next_interval(policy, 90, saw_new=True, calls_today=0, seconds_left_today=86_400) == 10
    # Late in a busy day: 100 calls left for 5 hours; idle polling would need 200. Spread them.
    slowed = next_interval(policy, 10, saw_new=True, calls_today=2_400, seconds_left_today=18_000)
    assert slowed == pytest.approx(180.0)
    # Spent: wait for the quota day to end.
    assert next_interval(policy, 10, saw_new=True, calls_today=2_500, seconds_left_today=3_600) == 3_600


def test_the_dataverse_window_share_sets_a_floor() -> None:
    policy = PollPolicy(fast=5, idle_max=30, window_calls=20, window_seconds=300)
    assert next_interval(policy, 30, saw_new=True) == 15  # 20 calls per 5 minutes at most


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="fast"):
        PollPolicy(fast=100, idle_max=10)
    with pytest.raises(ValueError, match="daily budget"):
        PollPolicy(fast=1, idle_max=10, daily_budget=-1)


# --- run shape ----------------------------------------------------------------------------------


def _row(direction: str, pending: int, age: timedelta = timedelta(seconds=20)) -> dict:
    return {"entity": "lead", "direction": direction, "pending": pending, "peeked_at": NOW - age}


@pytest.mark.parametrize(
    ("payloads", "due", "shape"),
    [
        ([{"source": "dataverse", "pending": {"lead": 3}, "more": False}], 0, "single"),
        ([{"pending": {"lead": 1}, "more": False}, {"pending": {"lead": 2}, "more": False}], 0, "single"),
        ([{"pending": {"lead": 3}, "more": True}], 0, "mapped"),  # more than a page waits
        ([{"pending": {"lead": 5000}, "more": False}], 0, "mapped"),  # over the threshold
        ([{"pending": {"contact": 2, "lead": 0}, "more": False}], 0, "nothing"),  # the other entity's
        ([{"pending": {"contact": 2, "lead": 0}, "more": False}], 4, "single"),  # retries are due
        ([{"pending": {"contact": 2}, "more": True}], 0, "nothing"),  # the other entity's "more"
        ([{}], 0, "mapped"),  # an event without a watcher's count
    ],
)
def test_shape_of_an_asset_triggered_run(payloads: list[dict], due: int, shape: str) -> None:
    assert choose_shape("lead", "asset_triggered", payloads=payloads, due_errors=due, now=NOW) == shape


def test_shape_of_a_safety_run_follows_the_backlog_only_when_fresh() -> None:
    both = ["d2m", "m2d"]
    fresh_empty = [_row("d2m", 0), _row("m2d", 0)]
    assert choose_shape("lead", "scheduled", backlog=fresh_empty, directions=both, now=NOW) == "nothing"
    assert (
        choose_shape("lead", "scheduled", backlog=fresh_empty, directions=both, due_errors=1, now=NOW)
        == "single"
    )
    small = [_row("d2m", 2), _row("m2d", 1)]
    assert choose_shape("lead", "scheduled", backlog=small, directions=both, now=NOW) == "single"
    stale = [_row("d2m", 0, timedelta(minutes=30)), _row("m2d", 0)]
    assert choose_shape("lead", "scheduled", backlog=stale, directions=both, now=NOW) == "mapped"
    missing = [_row("d2m", 0)]
    assert choose_shape("lead", "scheduled", backlog=missing, directions=both, now=NOW) == "mapped"
    big = [_row("d2m", 9000), _row("m2d", 0)]
    assert choose_shape("lead", "scheduled", backlog=big, directions=both, now=NOW) == "mapped"


def test_manual_runs_keep_the_mapped_shape_unless_asked() -> None:
    assert choose_shape("lead", "manual", now=NOW) == "mapped"
    assert choose_shape("lead", "backfill", now=NOW) == "mapped"
    assert choose_shape("lead", "manual", force_single=True, now=NOW) == "single"


def test_pending_from_events_ignores_events_of_no_watcher() -> None:
    assert pending_from_events("lead", [{"other": 1}]) is None
    assert pending_from_events("lead", [{"pending": {"lead": 2}, "more": True}]) == (2, True)


# --- latency ------------------------------------------------------------------------------------


def test_latency_from_the_change_times() -> None:
    times = [NOW - timedelta(seconds=s) for s in range(0, 100)]  # made 0..99 s before NOW
    summary = summarize([*times, None])
    assert summary is not None
    assert summary["n"] == 100
    lat = latency_seconds(summary, NOW + timedelta(seconds=10))
    assert lat["latency_max_s"] == 109.0
    assert lat["latency_p50_s"] == pytest.approx(59.0, abs=1)
    assert lat["latency_p95_s"] == pytest.approx(104.0, abs=1)
    p50, p95, worst = lat["latency_p50_s"], lat["latency_p95_s"], lat["latency_max_s"]
    assert p50 is not None
    assert p95 is not None
    assert worst is not None
    assert p50 <= p95 <= worst
    assert latency_seconds(None, NOW) == dict.fromkeys(("latency_p50_s", "latency_p95_s", "latency_max_s"))
    assert summarize([None]) is None


def test_combined_summaries_keep_the_oldest_and_weigh_the_medians() -> None:
    early = summarize([NOW - timedelta(seconds=100)] * 3)
    late = summarize([NOW - timedelta(seconds=10)] * 7)
    both = combine(early, None, late)
    assert both is not None
    assert both["n"] == 10
    assert both["oldest"] == (NOW - timedelta(seconds=100)).isoformat()
    assert both["median"] == (NOW - timedelta(seconds=10)).isoformat()
    assert combine(None, None) is None
