"""Dataverse service protection limits (``dynamics-web-api.md`` §7), per user, sliding window.

- number of requests: 6,000 per 300 s → 429, code ``0x80072322``;
- combined execution time: 1,200,000 ms per 300 s → 429, code ``0x80072321``;
- concurrent requests: 52 → 429 at once, code ``0x80072326``.

The first two trigger once the window already holds the limit (the request that would exceed
it is refused); ``Retry-After`` says when the oldest counted request leaves the window. A
``$batch`` counts as one request whose execution time is the whole batch's. ``time_scale`` F
shortens the window (and so ``Retry-After``) F times, for fast tests. Only Web API paths
(``/api/data/``) are limited; the token endpoint and the admin area are not.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from emulators.dynamics.auth import peek_subject

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from emulators.common.admin import CallStats

REQUESTS = "0x80072322"
EXECUTION_TIME = "0x80072321"
CONCURRENCY = "0x80072326"


@dataclass
class LimitConfig:
    """The limits in force; changed at run time through ``POST /_emulator/limits``."""

    enabled: bool = True
    requests: int = 6000
    execution_ms: int = 1_200_000
    concurrency: int = 52
    window_s: float = 300.0
    time_scale: float = 1.0

    @property
    def window(self) -> float:
        """The window in real seconds."""
        return self.window_s / self.time_scale

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (only known fields, with their types).

        Raises:
            ValueError: A field is unknown or its value is out of range.
        """
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown limit setting {key!r}")
            current = getattr(self, key)
            new = bool(value) if isinstance(current, bool) else type(current)(value)
            if not isinstance(new, bool) and new <= 0:
                raise ValueError(f"limit setting {key!r} must be positive, got {value!r}")
            setattr(self, key, new)


@dataclass
class _UserWindow:
    calls: deque[tuple[float, float]] = field(default_factory=deque)  # (start time, duration s)
    in_flight: int = 0


class ServiceProtection:
    """ASGI middleware enforcing :class:`LimitConfig` for each token subject."""

    def __init__(self, app: ASGIApp, config: LimitConfig, stats: CallStats) -> None:
        self.app = app
        self.config = config
        self.stats = stats
        self.users: dict[str, _UserWindow] = {}
        self.lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        return asdict(self.config)

    def reset(self) -> None:
        with self.lock:
            self.users.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/data/") or not self.config.enabled:
            await self.app(scope, receive, send)
            return
        user = self._user(scope)
        refusal = self._admit(user)
        if refusal is not None:
            code, message, retry_after = refusal
            self.stats.limit_hit(code)
            body = msgspec.json.encode({"error": {"code": code, "message": message}})
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json; odata.metadata=minimal"),
                        (b"odata-version", b"4.0"),
                        (b"retry-after", str(retry_after).encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        remaining = self._remaining(user)

        async def send_with_budget(message: Message) -> None:
            # Dataverse reports what is left of the window on normal responses (reference §7).
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *remaining]}
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, send_with_budget)
        finally:
            with self.lock:
                user.in_flight -= 1
                user.calls.append((started, time.monotonic() - started))

    def _user(self, scope: Scope) -> _UserWindow:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        key = peek_subject(auth[7:]) if auth.lower().startswith("bearer ") else "anonymous"
        with self.lock:
            return self.users.setdefault(key, _UserWindow())

    def _remaining(self, user: _UserWindow) -> list[tuple[bytes, bytes]]:
        """The ``x-ms-ratelimit-*`` headers: requests and execution milliseconds left."""
        with self.lock:
            requests_left = max(0, self.config.requests - len(user.calls) - 1)
            ms_left = max(0, int(self.config.execution_ms - 1000 * sum(d for _, d in user.calls)))
        return [
            (b"x-ms-ratelimit-burst-remaining-xrm-requests", str(requests_left).encode()),
            (b"x-ms-ratelimit-time-remaining-xrm-requests", str(ms_left).encode()),
        ]

    def _admit(self, user: _UserWindow) -> tuple[str, str, int] | None:
        """Count the request in, or return (code, message, Retry-After seconds) to refuse it."""
        cfg = self.config
        now = time.monotonic()
        window = cfg.window
        with self.lock:
            while user.calls and user.calls[0][0] <= now - window:
                user.calls.popleft()
            if user.in_flight >= cfg.concurrency:
                return (
                    CONCURRENCY,
                    f"Number of concurrent requests exceeded the limit of {cfg.concurrency}.",
                    1,
                )
            if len(user.calls) >= cfg.requests:
                wait = user.calls[len(user.calls) - cfg.requests][0] + window - now
                return (
                    REQUESTS,
                    f"Number of requests exceeded the limit of {cfg.requests} over time window"
                    f" of {int(cfg.window_s)} seconds.",
                    max(1, math.ceil(wait)),
                )
            total = sum(d for _, d in user.calls)
            if total * 1000 >= cfg.execution_ms:
                excess = total - cfg.execution_ms / 1000
                wait = window
                for start, duration in user.calls:  # leaves the window in start order
                    excess -= duration
                    if excess < 0:
                        wait = start + window - now
                        break
                return (
                    EXECUTION_TIME,
                    f"Combined execution time of incoming requests exceeded limit of"
                    f" {cfg.execution_ms:,} milliseconds over time window of {int(cfg.window_s)} seconds."
                    " Decrease number of concurrent requests or reduce the duration of requests and try"
                    " again later.",
                    max(1, math.ceil(wait)),
                )
            user.in_flight += 1
            return None
