"""Access tokens and Marketo's limits: 100 calls / 20 s (606), 10 in flight (615), daily quota (607).

The gate is an ASGI middleware in front of every ``/rest`` and ``/bulk`` path. It applies the
checks in the order a client observes them on the real service: HTTP 414/413 for oversized
requests, then the token (601/602, not counted against any limit, reference §2.1), then
concurrency, the rolling window and the daily quota. A rejected call is not added to the
window or the quota, so a client that backs off recovers as it would on Marketo.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse

from emulators.marketo.envelope import ERROR_MESSAGES, failure

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from emulators.common.admin import CallStats

# The daily quota resets at midnight US Central time (reference §2.1).
QUOTA_TZ = ZoneInfo("America/Chicago")
MB = 1024 * 1024


class LimitsConfig(BaseModel):
    """Every limit of the emulator; ``PUT /_emulator/limits`` replaces fields at run time.

    ``time_scale`` multiplies the rate window and bulk job durations, so tests can use
    a 0.1 s window instead of 20 s.
    """

    enabled: bool = True
    rate_limit: int = Field(100, ge=1)
    rate_window_s: float = Field(20.0, gt=0)
    time_scale: float = Field(1.0, gt=0)
    max_concurrent: int = Field(10, ge=1)
    daily_quota: int = Field(50_000, ge=0)
    hold_ms: int = Field(0, ge=0, description="service time added inside the concurrency window")
    token_ttl_s: int = Field(3600, ge=1)
    max_uri_bytes: int = Field(8 * 1024, ge=256)
    max_body_bytes: int = Field(MB, ge=1024)
    max_import_bytes: int = Field(10 * MB, ge=1024)
    max_filter_matches: int = Field(1000, ge=1)
    export_running: int = Field(2, ge=1)
    export_queued: int = Field(10, ge=1)
    export_daily_mb: float = Field(500.0, ge=0)
    export_max_days: int = Field(31, ge=1)
    import_running: int = Field(2, ge=1)
    import_queued: int = Field(10, ge=1)
    bulk_job_s: float = Field(1.0, ge=0, description="minimum time a bulk job spends processing")

    @property
    def window_s(self) -> float:
        return self.rate_window_s * self.time_scale


def quota_day(now: float | None = None) -> str:
    """Return the US Central calendar day the daily quotas count against."""
    return dt.datetime.fromtimestamp(now if now is not None else time.time(), QUOTA_TZ).date().isoformat()


@dataclass
class Token:
    """An issued access token."""

    value: str
    client_id: str
    expires_at: float


class TokenStore:
    """One live token per client id, reissued only after expiry (reference §1.1).

    Expired tokens are remembered so that using one yields 602, not 601.
    """

    def __init__(self) -> None:
        self._by_value: dict[str, Token] = {}
        self._live: dict[str, Token] = {}
        self._lock = threading.Lock()

    def issue(self, client_id: str, ttl_s: int) -> Token:
        now = time.time()
        with self._lock:
            live = self._live.get(client_id)
            if live is not None and live.expires_at > now:
                return live
            token = Token(f"{uuid.uuid4()}:emu", client_id, now + ttl_s)
            self._live[client_id] = token
            self._by_value[token.value] = token
            return token

    def check(self, value: str | None) -> str | None:
        """Return None when ``value`` is a live token, else the error code (601/602)."""
        if not value:
            return "601"
        token = self._by_value.get(value)
        if token is None:
            return "601"
        return "602" if token.expires_at <= time.time() else None

    def expire_all(self) -> int:
        """Expire every token now (admin ``expire-tokens``); return how many were live."""
        now = time.time()
        with self._lock:
            count = sum(1 for t in self._live.values() if t.expires_at > now)
            for token in self._by_value.values():
                token.expires_at = min(token.expires_at, now)
            self._live.clear()
        return count


class Limiter:
    """Counters behind 606, 615 and 607."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.day = quota_day()
        self.day_calls = 0
        self.usage: dict[str, int] = {}
        self.errors: dict[str, dict[str, int]] = {}

    def enter(self) -> str | None:
        """Admit a call or return the code that rejects it; admitted calls must ``leave()``."""
        cfg = self.config
        now = time.monotonic()
        with self._lock:
            today = quota_day()
            if today != self.day:
                self.day, self.day_calls = today, 0
            if cfg.enabled:
                if self.in_flight >= cfg.max_concurrent:
                    return "615"
                window = cfg.window_s
                while self._calls and self._calls[0] <= now - window:
                    self._calls.popleft()
                if len(self._calls) >= cfg.rate_limit:
                    return "606"
                if self.day_calls >= cfg.daily_quota:
                    return "607"
            self._calls.append(now)
            self.in_flight += 1
            self.day_calls += 1
            self.usage[today] = self.usage.get(today, 0) + 1
            return None

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def note_error(self, code: str) -> None:
        with self._lock:
            day = self.errors.setdefault(quota_day(), {})
            day[code] = day.get(code, 0) + 1

    def reset(self) -> None:
        """Forget the window and today's count (admin ``reset-counters``)."""
        with self._lock:
            self._calls.clear()
            self.day_calls = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "in_flight": self.in_flight,
                "window_calls": len(self._calls),
                "day": self.day,
                "day_calls": self.day_calls,
            }


def bearer_token(scope: Scope) -> str | None:
    """Return the token from ``Authorization: Bearer`` or the legacy ``access_token`` parameter."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text.lower().startswith("bearer "):
                return text[7:].strip()
    query = scope.get("query_string", b"").decode("latin-1")
    for part in query.split("&"):
        if part.startswith("access_token="):
            return unquote_plus(part.split("=", 1)[1])
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def is_import_path(path: str) -> bool:
    """Bulk import uploads get the 10 MB limit instead of 1 MB."""
    return path == "/bulk/v1/leads.json" or (
        path.startswith("/bulk/v1/customobjects/") and path.endswith("/import.json")
    )


class MarketoGate:
    """ASGI middleware enforcing sizes, tokens and limits on ``/rest`` and ``/bulk``."""

    def __init__(self, app: ASGIApp, tokens: TokenStore, limiter: Limiter, stats: CallStats) -> None:
        self.app = app
        self.tokens = tokens
        self.limiter = limiter
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/rest/", "/bulk/")):
            await self.app(scope, receive, send)
            return
        cfg = self.limiter.config
        if (
            len(scope.get("raw_path") or path.encode()) + len(scope.get("query_string", b"")) + 1
            > cfg.max_uri_bytes
        ):
            await PlainTextResponse("Request-URI Too Long", status_code=414)(scope, receive, send)
            return
        size = _content_length(scope)
        limit = cfg.max_import_bytes if is_import_path(path) else cfg.max_body_bytes
        if size is not None and size > limit:
            await PlainTextResponse("Request Entity Too Large", status_code=413)(scope, receive, send)
            return
        code = self.tokens.check(bearer_token(scope))
        if code is None:
            code = self.limiter.enter()
            if code is None:
                try:
                    if cfg.hold_ms:
                        await asyncio.sleep(cfg.hold_ms / 1000)
                    await self.app(scope, receive, send)
                finally:
                    self.limiter.leave()
                return
            self.stats.limit_hit(code)
        message = None
        if code == "606":
            message = ERROR_MESSAGES["606"] % (cfg.rate_limit, f"{cfg.window_s:g}")
        elif code == "601" and bearer_token(scope) is None:
            # Marketo's wording when the token is missing; the code stays 601 so clients
            # re-authenticate (marketorestpython relies on it, independent-clients §1).
            message = "Access token not specified"
        self.limiter.note_error(code)
        await failure(code, message)(scope, receive, send)
