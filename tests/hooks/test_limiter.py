"""The shared call limiter, on SQLite and on Redis, across real processes."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path

import pytest

from crm_sync_hooks.errors import CallBudgetExhausted, ConfigurationError, LimiterTimeout
from crm_sync_hooks.limiter import Limits, RedisLimiter, SqliteLimiter, limiter_from_url

REDIS_URL = "redis://127.0.0.1:6379/15"


def _worker(
    url: str, scope: str, limits: Limits, calls: int, service_seconds: float
) -> list[tuple[float, float]]:
    """Make ``calls`` limited calls that each take ``service_seconds``; return (start, end) times."""
    limiter = limiter_from_url(url, scope, limits)
    spans = []
    for _ in range(calls):
        token = limiter.acquire(timeout=60)
        start = time.time()
        time.sleep(service_seconds)  # stands for the HTTP call the slot was taken for
        end = time.time()
        limiter.release(token)
        spans.append((start, end))
    return spans


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/limiter.sqlite"
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:  # the brief's environment runs Redis; say so clearly if not
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
    return REDIS_URL


@pytest.fixture
def scope() -> str:
    return f"test:{uuid.uuid4().hex}"


def max_starts_in_window(starts: list[float], window: float) -> int:
    """Most call starts inside any rolling window ``(t - window, t]``: what a server would count."""
    starts = sorted(starts)
    return max(sum(1 for s in starts if t - window < s <= t) for t in starts)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_two_processes_stay_together_under_rate_and_concurrency(store_url, scope):
    limits = Limits(max_calls=5, window_seconds=0.5, max_concurrent=2)
    ctx = multiprocessing.get_context("spawn")
    began = time.monotonic()
    with ctx.Pool(2) as pool:
        results = pool.starmap(_worker, [(store_url, scope, limits, 15, 0.03)] * 2)
    elapsed = time.monotonic() - began
    spans = [span for result in results for span in result]
    assert len(spans) == 30
    assert max_starts_in_window([s for s, _ in spans], limits.window_seconds) <= limits.max_calls
    assert max_overlap(spans) <= limits.max_concurrent
    # 30 calls at 5 per 0.5 s cannot finish in under 2.5 s: the limit really held them back.
    assert elapsed >= 2.5


def test_budget_is_shared_and_stops_before_it_is_exceeded(store_url, scope):
    limits = Limits(max_calls=100, window_seconds=1, max_concurrent=5, daily_budget=3)
    first, second = limiter_from_url(store_url, scope, limits), limiter_from_url(store_url, scope, limits)
    first.release(first.acquire())
    second.release(second.acquire())
    first.release(first.acquire())
    with pytest.raises(CallBudgetExhausted, match="daily call budget of 3"):
        second.acquire()
    assert first.budget_used() == 3
    # calls that do not count against the budget (identity) still get a slot
    second.release(second.acquire(count_budget=False))


def test_pause_makes_every_limiter_of_the_scope_wait(store_url, scope):
    limits = Limits(max_calls=100, window_seconds=1, max_concurrent=5)
    one, other = limiter_from_url(store_url, scope, limits), limiter_from_url(store_url, scope, limits)
    one.pause(0.4)
    began = time.monotonic()
    other.release(other.acquire(timeout=5))
    assert time.monotonic() - began >= 0.35


def test_slot_of_a_dead_caller_is_freed_when_its_lease_ends(store_url, scope):
    limits = Limits(max_calls=100, window_seconds=0.1, max_concurrent=1, lease_seconds=0.3)
    limiter = limiter_from_url(store_url, scope, limits)
    limiter.acquire()  # never released, as if the process had died
    began = time.monotonic()
    limiter.release(limiter.acquire(timeout=5))
    assert time.monotonic() - began >= 0.25


def test_waiting_too_long_raises_limiter_timeout(store_url, scope):
    limits = Limits(max_calls=100, window_seconds=1, max_concurrent=1)
    limiter = limiter_from_url(store_url, scope, limits)
    held = limiter.acquire()
    with pytest.raises(LimiterTimeout, match=r"no call slot .* within 0s"):
        limiter.acquire(timeout=0.2)
    limiter.release(held)


def test_limiter_url_selects_the_store(tmp_path):
    limits = Limits(max_calls=1, window_seconds=1, max_concurrent=1)
    assert isinstance(limiter_from_url(f"sqlite:///{tmp_path}/x.sqlite", "s", limits), SqliteLimiter)
    assert isinstance(limiter_from_url(REDIS_URL, "s", limits), RedisLimiter)
    with pytest.raises(ConfigurationError, match="'memcached' is not supported"):
        limiter_from_url("memcached://x", "s", limits)


def test_invalid_limits_are_refused():
    with pytest.raises(ConfigurationError, match="limits must be positive"):
        Limits(max_calls=0, window_seconds=1, max_concurrent=1)
