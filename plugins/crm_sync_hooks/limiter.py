"""Call limits shared by every process that talks to the same API instance.

Marketo allows 100 calls per rolling 20 s and 10 concurrent calls per instance, shared by all
integrations; Dataverse allows 6,000 requests per 5 minutes and 52 concurrent per user. A
per-object counter cannot keep several Airflow tasks (several processes, maybe several hosts)
under those limits, so the counters live in a shared store:

* SQLite (the default, one file under ``var/``): good for every process on one machine. Each
  decision runs in a ``BEGIN IMMEDIATE`` transaction, so two processes never both take the last
  slot.
* Redis (``redis://`` URL): for Celery workers on several hosts. Each decision is one Lua script,
  atomic on the server, and uses the Redis server's clock so host clocks need not agree.

How the window is counted: the server sees a call at some moment between our send and our
receipt of its answer. A call therefore counts against the rolling window from the moment it is
acquired until ``window`` seconds after it *finished*, which is never less than the server's own
count. A call whose process died keeps its slot until its lease runs out.

The daily call budget (Marketo) is counted in the same store, per calendar day in the API's reset
time zone, and checked before each call so work stops before the real quota is spent.
"""

from __future__ import annotations

import abc
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse
from zoneinfo import ZoneInfo

from crm_sync_hooks.errors import CallBudgetExhausted, ConfigurationError, LimiterTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

PROJECT_DIR = Path(os.environ.get("MDS_PROJECT_DIR") or Path(__file__).resolve().parents[2])
DEFAULT_SQLITE_PATH = PROJECT_DIR / "var" / "api_limiter.sqlite"


@dataclass(frozen=True)
class Limits:
    """The limits one scope (one API instance, or one API user) must stay under.

    Attributes:
        max_calls: Calls allowed in any rolling window.
        window_seconds: Length of the rolling window.
        max_concurrent: Calls allowed in flight at once.
        daily_budget: Calls allowed per day (None = no budget).
        budget_timezone: Time zone whose midnight resets the budget.
        lease_seconds: How long a slot taken by a process that died stays taken.
    """

    max_calls: int
    window_seconds: float
    max_concurrent: int
    daily_budget: int | None = None
    budget_timezone: str = "UTC"
    lease_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_calls < 1 or self.window_seconds <= 0 or self.max_concurrent < 1:
            raise ConfigurationError(f"limits must be positive: {self}")
        if self.daily_budget is not None and self.daily_budget < 0:
            raise ConfigurationError(f"daily_budget must not be negative: {self.daily_budget}")

    def budget_day(self, epoch: float) -> str:
        """Return the budget's calendar day (``YYYY-MM-DD``) for a POSIX time."""
        return datetime.fromtimestamp(epoch, ZoneInfo(self.budget_timezone)).date().isoformat()


class CallLimiter(abc.ABC):
    """Hands out call slots for one scope; every process using the same store and scope shares them.

    Args:
        scope: Name of what is limited, e.g. ``"marketo:https://123-abc-456.mktorest.com"``.
        limits: The limits.
        poll_interval: Seconds between checks while waiting for a concurrency slot.
    """

    def __init__(self, scope: str, limits: Limits, poll_interval: float = 0.02):
        self.scope = scope
        self.limits = limits
        self.poll_interval = poll_interval
        self._rng = random.Random()

    @abc.abstractmethod
    def _try_acquire(self, token: str, count_budget: bool) -> float | None:
        """Take a slot for ``token`` if the limits allow; else return seconds worth waiting.

        Raises:
            CallBudgetExhausted: ``count_budget`` is set and today's budget is spent.
        """

    @abc.abstractmethod
    def release(self, token: str) -> None:
        """Mark the call ``token`` as finished; it keeps counting in the window for ``window_seconds``."""

    @abc.abstractmethod
    def pause(self, seconds: float) -> None:
        """Make every caller of this scope wait ``seconds`` (the server said the instance is over limit)."""

    @abc.abstractmethod
    def budget_used(self) -> int:
        """Return how many budgeted calls were made today."""

    def acquire(self, *, count_budget: bool = True, timeout: float = 300.0) -> str:
        """Wait until a call may start and return its token (give it back with :meth:`release`).

        Args:
            count_budget: Count this call against the daily budget.
            timeout: Longest wait in seconds.

        Raises:
            LimiterTimeout: No slot became free within ``timeout``.
            CallBudgetExhausted: Today's budget is spent.
        """
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            wait = self._try_acquire(token, count_budget)
            if wait is None:
                return token
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LimiterTimeout(
                    f"no call slot for {self.scope} within {timeout:.0f}s "
                    f"(limits {self.limits.max_calls}/{self.limits.window_seconds:g}s, "
                    f"{self.limits.max_concurrent} concurrent)"
                )
            # Jitter so that waiting processes do not all wake on the same tick.
            step = max(wait, self.poll_interval) * (1 + self._rng.random() * 0.2)
            time.sleep(min(step, remaining, 1.0))

    @contextmanager
    def slot(self, *, count_budget: bool = True, timeout: float = 300.0) -> Iterator[str]:
        """Hold a call slot for the duration of the ``with`` block."""
        token = self.acquire(count_budget=count_budget, timeout=timeout)
        try:
            yield token
        finally:
            self.release(token)

    def _budget_exhausted(self, used: int) -> CallBudgetExhausted:
        return CallBudgetExhausted(
            f"daily call budget of {self.limits.daily_budget} for {self.scope} is spent "
            f"({used} calls today, {self.limits.budget_timezone} day); resume after midnight there"
        )


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_calls (
    token TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    lease_until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS api_calls_scope ON api_calls (scope);
CREATE TABLE IF NOT EXISTS api_pauses (scope TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_budget (
    scope TEXT NOT NULL, day TEXT NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (scope, day)
);
"""


class SqliteLimiter(CallLimiter):
    """A limiter whose counters live in a SQLite file shared by the processes of one machine."""

    def __init__(
        self,
        path: Path,
        scope: str,
        limits: Limits,
        poll_interval: float = 0.02,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(scope, limits, poll_interval)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._set_up(deadline=time.monotonic() + 30)

    def _set_up(self, deadline: float) -> None:
        """Switch the file to WAL and create the tables, waiting out another process doing the same.

        SQLite answers "database is locked" at once, without its busy handler, when two
        connections switch a new file's journal mode together; so the set-up is retried.
        """
        while True:
            try:
                # WAL lets readers proceed while one process holds the write lock.
                self._db.execute("PRAGMA journal_mode = WAL")
                # No fsync per decision: a power cut may forget the last few counts, which only
                # makes the next seconds a little less cautious; an fsync per call costs far more.
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                for statement in _SQLITE_SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    def close(self) -> None:
        """Close the database handle."""
        with self._lock:
            self._db.close()

    def _try_acquire(self, token: str, count_budget: bool) -> float | None:
        lim = self.limits
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                now = self._clock()
                horizon = now - lim.window_seconds
                db.execute(
                    "DELETE FROM api_calls WHERE scope = ? AND "
                    "((finished IS NOT NULL AND finished <= ?) OR (finished IS NULL AND lease_until <= ?))",
                    (self.scope, horizon, horizon),
                )
                row = db.execute("SELECT until FROM api_pauses WHERE scope = ?", (self.scope,)).fetchone()
                if row and row[0] > now:
                    db.execute("COMMIT")
                    return float(row[0] - now)
                in_flight, in_window, first_end = db.execute(
                    "SELECT COALESCE(SUM(finished IS NULL AND lease_until > ?), 0), COUNT(*), "
                    "MIN(COALESCE(finished, lease_until)) FROM api_calls WHERE scope = ?",
                    (now, self.scope),
                ).fetchone()
                if in_flight >= lim.max_concurrent:
                    db.execute("COMMIT")
                    return self.poll_interval
                if in_window >= lim.max_calls:
                    db.execute("COMMIT")
                    return max(float(first_end) + lim.window_seconds - now, self.poll_interval)
                if count_budget and lim.daily_budget is not None:
                    day = lim.budget_day(now)
                    row = db.execute(
                        "SELECT used FROM api_budget WHERE scope = ? AND day = ?", (self.scope, day)
                    ).fetchone()
                    used = int(row[0]) if row else 0
                    if used >= lim.daily_budget:
                        db.execute("COMMIT")
                        raise self._budget_exhausted(used)
                    db.execute(
                        "INSERT INTO api_budget (scope, day, used) VALUES (?, ?, 1) "
                        "ON CONFLICT (scope, day) DO UPDATE SET used = used + 1",
                        (self.scope, day),
                    )
                db.execute(
                    "INSERT INTO api_calls (token, scope, started, finished, lease_until) "
                    "VALUES (?, ?, ?, NULL, ?)",
                    (token, self.scope, now, now + lim.lease_seconds),
                )
                db.execute("COMMIT")
                return None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def release(self, token: str) -> None:
        with self._lock:
            self._db.execute("UPDATE api_calls SET finished = ? WHERE token = ?", (self._clock(), token))

    def pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        with self._lock:
            self._db.execute(
                "INSERT INTO api_pauses (scope, until) VALUES (?, ?) "
                "ON CONFLICT (scope) DO UPDATE SET until = MAX(until, excluded.until)",
                (self.scope, until),
            )

    def budget_used(self) -> int:
        day = self.limits.budget_day(self._clock())
        with self._lock:
            row = self._db.execute(
                "SELECT used FROM api_budget WHERE scope = ? AND day = ?", (self.scope, day)
            ).fetchone()
        return int(row[0]) if row else 0


# One atomic decision on the Redis server. KEYS: calls zset, in-flight zset, pause key, budget key.
# A call's score in the calls zset is when it stops counting against the window minus the window:
# its lease end while in flight, its finish time afterwards.
_REDIS_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window, max_calls, max_conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, token, budget, poll = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then return {1, tostring(pause - now)} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= max_conc then return {1, tostring(poll)} end
if redis.call('ZCARD', KEYS[1]) >= max_calls then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, tostring(math.max(tonumber(first[2]) + window - now, poll))}
end
if budget >= 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= budget then return {2, tostring(used)} end
  redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], 259200)
end
redis.call('ZADD', KEYS[1], now + lease, token)
redis.call('ZADD', KEYS[2], now + lease, token)
redis.call('EXPIRE', KEYS[1], math.ceil(window + lease) + 60)
redis.call('EXPIRE', KEYS[2], math.ceil(lease) + 60)
return {0, '0'}
"""

_REDIS_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

_REDIS_PAUSE = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > cur then redis.call('SET', KEYS[1], tostring(until_), 'EX', math.ceil(tonumber(ARGV[1])) + 60) end
return 1
"""


class RedisLimiter(CallLimiter):
    """A limiter whose counters live in Redis, for workers on several hosts."""

    def __init__(self, url: str, scope: str, limits: Limits, poll_interval: float = 0.02):
        super().__init__(scope, limits, poll_interval)
        import redis  # imported here: only deployments that choose Redis need the client

        self._redis = redis.Redis.from_url(url)
        # The hash tag keeps all keys of one scope on one Redis Cluster slot.
        prefix = f"crm_sync:limiter:{{{scope}}}"
        self._calls, self._in_flight, self._pause = f"{prefix}:calls", f"{prefix}:inflight", f"{prefix}:pause"
        self._budget_prefix = f"{prefix}:budget"
        self._acquire_script = self._redis.register_script(_REDIS_ACQUIRE)
        self._release_script = self._redis.register_script(_REDIS_RELEASE)
        self._pause_script = self._redis.register_script(_REDIS_PAUSE)

    def _budget_key(self) -> str:
        return f"{self._budget_prefix}:{self.limits.budget_day(time.time())}"

    def _try_acquire(self, token: str, count_budget: bool) -> float | None:
        lim = self.limits
        budget = lim.daily_budget if count_budget and lim.daily_budget is not None else -1
        outcome: Any = self._acquire_script(
            keys=[self._calls, self._in_flight, self._pause, self._budget_key()],
            args=[
                lim.window_seconds,
                lim.max_calls,
                lim.max_concurrent,
                lim.lease_seconds,
                token,
                budget,
                self.poll_interval,
            ],
        )
        kind, value = int(outcome[0]), float(outcome[1])
        if kind == 0:
            return None
        if kind == 2:
            raise self._budget_exhausted(int(value))
        return value

    def release(self, token: str) -> None:
        self._release_script(keys=[self._calls, self._in_flight], args=[token])

    def pause(self, seconds: float) -> None:
        self._pause_script(keys=[self._pause], args=[seconds])

    def budget_used(self) -> int:
        value = self._redis.get(self._budget_key())
        return int(value) if value is not None else 0


def limiter_from_url(url: str | None, scope: str, limits: Limits) -> CallLimiter:
    """Build the limiter named by a connection's ``limiter_url`` extra.

    Args:
        url: ``sqlite:////absolute/path.sqlite``, ``redis://host:port/db`` (or ``rediss://``), or
            None/empty for the default SQLite file under the project's ``var/``.
        scope: What is limited.
        limits: The limits.

    Raises:
        ConfigurationError: The URL scheme is not supported.
    """
    if not url:
        return SqliteLimiter(DEFAULT_SQLITE_PATH, scope, limits)
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel/path -> "/rel/path" (relative).
        raw = unquote(parsed.path)
        path = Path(raw[1:]) if raw.startswith("//") else Path(raw.lstrip("/"))
        if not path.is_absolute():
            path = PROJECT_DIR / path
        return SqliteLimiter(path, scope, limits)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisLimiter(url, scope, limits)
    raise ConfigurationError(
        f"limiter_url scheme {parsed.scheme!r} is not supported (use sqlite:// or redis://)"
    )
