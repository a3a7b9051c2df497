"""Call statistics, fault injection and the ``/_emulator/`` admin area, shared by both emulators.

The admin area never sits under a real API path. Tests and benchmarks read call counts from
``GET /_emulator/stats`` and switch faults on with ``PUT /_emulator/faults``.

How a fault looks on the wire differs per API (Marketo answers HTTP 200 with ``success: false``
and a code; Dataverse answers 429 or 5xx with an OData error), so each emulator passes a
``render_fault`` callback that turns a code into its own response.
"""

from __future__ import annotations

import asyncio
import copy
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

ADMIN_PREFIX = "/_emulator"

_ID_SEGMENT = re.compile(
    r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\d+)(?=/|$|\.)"
)
_KEY_SEGMENT = re.compile(r"\((?:[^)]*)\)")


def route_key(method: str, path: str) -> str:
    """Return ``"METHOD /path"`` with ids and OData keys replaced, for counting calls per endpoint."""
    path = _KEY_SEGMENT.sub("({key})", path)
    path = _ID_SEGMENT.sub("/{id}", path)
    return f"{method.upper()} {path}"


class FaultConfig(BaseModel):
    """Faults applied to API calls (never to the admin area).

    ``error_codes`` are the emulator's own codes (for example ``"606"`` or ``"503"``); one is
    picked at random for each call chosen by ``error_rate``.
    """

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    error_codes: list[str] = Field(default_factory=list)
    drop_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(0, ge=0)
    endpoints: list[str] | None = Field(
        None, description="path prefixes the faults apply to; all API paths when omitted"
    )
    seed: int | None = None

    def applies_to(self, path: str) -> bool:
        return self.endpoints is None or any(path.startswith(prefix) for prefix in self.endpoints)


@dataclass
class CallStats:
    """Thread-safe counters of API calls, outcomes, concurrency and records touched."""

    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)
    limit_hits: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    # Calls a latency fault is holding right now, by route: a test can act while a write is
    # surely in flight (sent, not yet applied) instead of guessing the moment from timings.
    held: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, key: str) -> None:
        with self._lock:
            self.calls[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.statuses[str(status)] += 1

    def add_records(self, kind: str, count: int) -> None:
        """Count records read or written, e.g. ``add_records("lead.read", 300)``."""
        with self._lock:
            self.records[kind] += count

    def hold(self, key: str, delta: int) -> None:
        with self._lock:
            self.held[key] += delta
            if self.held[key] <= 0:
                del self.held[key]

    def limit_hit(self, code: str) -> None:
        with self._lock:
            self.limit_hits[code] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            # asdict() would deep-copy the lock too, which cannot be copied: skip that field.
            data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "_lock"}
        data["total_calls"] = sum(self.calls.values())
        return data

    def reset(self) -> None:
        with self._lock:
            in_flight = self.in_flight
            self.calls.clear()
            self.statuses.clear()
            self.records.clear()
            self.limit_hits.clear()
            self.faults_injected.clear()
            self.max_in_flight = in_flight
            self.started_at = time.time()


class AdminState:
    """What the admin area controls: the stats and the current fault configuration."""

    def __init__(self) -> None:
        self.stats = CallStats()
        self.faults = FaultConfig()
        self.rng = random.Random()

    def set_faults(self, faults: FaultConfig) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)


class EmulatorMiddleware:
    """Count every API call and apply the configured faults before the app sees it.

    A dropped connection is emulated by announcing a body and then aborting: the client sees
    the connection close mid-response, as with a real network fault.
    """

    def __init__(self, app: ASGIApp, state: AdminState, render_fault: Callable[[str], Response]) -> None:
        self.app = app
        self.state = state
        self.render_fault = render_fault

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        stats = self.state.stats
        key = route_key(scope["method"], scope["path"])
        stats.begin(key)
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            faults = self.state.faults
            if faults.applies_to(scope["path"]):
                if faults.latency_ms:
                    stats.hold(key, 1)
                    try:
                        await asyncio.sleep(faults.latency_ms / 1000)
                    finally:
                        stats.hold(key, -1)
                roll = self.state.rng.random()
                if roll < faults.drop_rate:
                    stats.faults_injected["drop"] += 1
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [(b"content-length", b"1000")],
                        }
                    )
                    raise ConnectionAbortedError("emulated dropped connection")
                if faults.error_codes and roll < faults.drop_rate + faults.error_rate:
                    code = self.state.rng.choice(faults.error_codes)
                    stats.faults_injected[code] += 1
                    await self.render_fault(code)(scope, receive, send_wrapper)
                    return
            await self.app(scope, receive, send_wrapper)
        finally:
            stats.end(status_holder["status"])


def admin_router(state: AdminState, extra: dict[str, Callable[..., Any]] | None = None) -> APIRouter:
    """Return the ``/_emulator`` router.

    Args:
        state: The shared admin state.
        extra: Side-specific POST actions, e.g. ``{"expire-tokens": fn, "sandbox-refresh": fn}``;
            each is served at ``POST /_emulator/<name>`` and its return value is sent as JSON.
    """
    router = APIRouter(prefix=ADMIN_PREFIX, tags=["emulator admin"])

    @router.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/stats")
    def stats() -> dict[str, Any]:
        return state.stats.snapshot()

    @router.post("/stats/reset")
    def reset_stats() -> dict[str, Any]:
        state.stats.reset()
        return state.stats.snapshot()

    @router.get("/faults")
    def get_faults() -> FaultConfig:
        return state.faults

    @router.put("/faults")
    def put_faults(faults: FaultConfig) -> FaultConfig:
        state.set_faults(faults)
        return state.faults

    @router.delete("/faults")
    def clear_faults() -> FaultConfig:
        state.set_faults(FaultConfig())
        return state.faults

    for name, action in (extra or {}).items():
        router.add_api_route(f"/{name}", _json_action(action), methods=["POST"], name=name)

    return router


def _json_action(action: Callable[..., Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        body: Any = None
        if await request.body():
            body = await request.json()
        result = action(body) if _takes_argument(action) else action()
        return JSONResponse(result if result is not None else {"ok": True})

    return endpoint


def _takes_argument(fn: Callable[..., Any]) -> bool:
    import inspect

    return len(inspect.signature(fn).parameters) > 0
