"""The Dataverse emulator's ASGI app: Web API, Entra ID token endpoint and the admin area.

Layers, outermost first: service protection limits (so that injected latency counts as
execution time and occupies a concurrency slot, as a slow request does), the shared
call-counting and fault-injecting middleware, then FastAPI routes.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from emulators.common.admin import AdminState, EmulatorMiddleware, admin_router
from emulators.dynamics import batch, customize, security
from emulators.dynamics.auth import TokenIssuer, origin, token_router
from emulators.dynamics.errors import ODataError
from emulators.dynamics.limits import REQUESTS, LimitConfig, ServiceProtection
from emulators.dynamics.service import API_PATH, ApiRequest, ApiResponse, WebApi
from emulators.dynamics.store import Store, change_column, read_meta, refresh_sandbox, reset_data, write_meta

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.types import ASGIApp

    from emulators.common.credentials import ClientCredentials

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """How the emulator behaves (from the command line)."""

    db_path: Path
    credentials: ClientCredentials
    limits: LimitConfig
    token_lifetime_s: int = 3599
    delta_token_expiry_days: float = 7.0
    bare: bool = False


def render_fault(code: str) -> Response:
    """Answer an injected fault the way Dataverse would: 429 with Retry-After, or an HTTP error."""
    if code == "429":
        body = ApiResponse.json(
            {
                "error": {
                    "code": REQUESTS,
                    "message": "Number of requests exceeded the limit"
                    " of 6000 over time window of 300 seconds.",
                }
            },
            429,
            {"Retry-After": "1"},
        )
    elif code == "401":
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
    else:
        status = int(code) if code.isdigit() and 400 <= int(code) < 600 else 503
        body = ApiResponse.json(
            {"error": {"code": "0x80040216", "message": f"Emulated fault {code}."}}, status
        )
    return Response(body.body, status_code=body.status, headers=body.headers)


def _to_response(resp: ApiResponse) -> Response:
    return Response(resp.body, status_code=resp.status, headers=resp.headers)


def build(settings: Settings) -> ASGIApp:
    """Return the ASGI app for ``settings`` (the database is created on first use)."""
    store = Store(settings.db_path)
    with store.engine.begin() as conn:
        meta = read_meta(conn)
        if "signing_key" not in meta:  # kept in the database so tokens survive a restart
            write_meta(conn, "signing_key", secrets.token_hex(32))
            meta = read_meta(conn)
    if settings.bare:
        _apply_bare(store, again=False)
    issuer = TokenIssuer(settings.credentials, bytes.fromhex(meta["signing_key"]), settings.token_lifetime_s)
    admin = AdminState()
    delta_expiry_s = settings.delta_token_expiry_days * 86400 / settings.limits.time_scale
    api = WebApi(store, admin.stats, delta_expiry_s)
    app = FastAPI(title="Dynamics 365 Web API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(token_router(issuer))
    limiter_box: dict[str, ServiceProtection] = {}

    def limits(body: Any) -> dict[str, Any]:
        try:
            settings.limits.update(dict(body or {}))
        except (ValueError, TypeError) as exc:
            raise HTTPException(400, str(exc)) from None
        limiter_box["limiter"].reset()
        api.delta_expiry_s = settings.delta_token_expiry_days * 86400 / settings.limits.time_scale
        return limiter_box["limiter"].settings()

    def admin_write(fn: Any) -> Any:
        with store.write_lock, store.engine.begin() as conn:
            result = fn(conn)
            store.reload(conn)
        return result

    def schema(body: Any) -> dict[str, Any]:
        try:
            return dict(admin_write(lambda conn: change_column(conn, store.tables, dict(body or {}))))
        except ODataError as err:
            raise HTTPException(400, err.message) from None

    def reset() -> dict[str, Any]:
        admin_write(lambda conn: reset_data(conn, store.tables))
        if settings.bare:  # an emulator started bare stays bare
            _apply_bare(store, again=False)
        api.visible_digits.clear()
        return {"ok": True, "organization_id": store.meta["organization_id"]}

    def bare() -> dict[str, Any]:
        return _apply_bare(store, again=True)

    def role(body: Any) -> dict[str, Any]:
        try:
            return dict(admin_write(lambda conn: security.change_role(conn, store.tables, dict(body or {}))))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    def sandbox_refresh() -> dict[str, Any]:
        result = admin_write(lambda conn: refresh_sandbox(conn, store.tables))
        return {**result, "organization_id": store.meta["organization_id"]}

    def visibility(body: Any) -> dict[str, Any]:
        body = dict(body or {})
        table = str(body.get("table", ""))
        if table not in store.tables:
            raise HTTPException(400, f"unknown table {table!r}")
        try:
            share = api.set_visibility(table, float(body.get("visible_fraction", 1.0)))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"table": table, "visible_fraction": share}

    def expire_delta_tokens() -> dict[str, Any]:
        n = admin_write(lambda conn: conn.exec_driver_sql("UPDATE delta_tokens SET expired = 1").rowcount)
        return {"expired": n}

    app.include_router(
        admin_router(
            admin,
            extra={
                "expire-tokens": issuer.expire_all,
                "expire-delta-tokens": expire_delta_tokens,
                "limits": limits,
                "sandbox-refresh": sandbox_refresh,
                "visibility": visibility,
                "reset": reset,
                "schema": schema,
                "bare": bare,
                "role": role,
            },
        )
    )

    @app.api_route(API_PATH + "/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    async def web_api(path: str, request: Request) -> Response:
        failure = _authenticate(request, issuer)
        if failure is not None:
            return failure
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers["prefer"] = ",".join(request.headers.getlist("prefer"))
        base = origin(request)
        if path == "$batch" and request.method == "POST":
            resp = await run_in_threadpool(
                batch.run_batch, api, body, headers.get("content-type", ""), headers, base
            )
            return _to_response(resp)
        query = dict(_parse_query(request.url.query))
        req = ApiRequest(request.method, path, query, headers, body, base)
        return _to_response(await run_in_threadpool(api.handle, req))

    wrapped: ASGIApp = EmulatorMiddleware(app, admin, render_fault)
    limiter = ServiceProtection(wrapped, settings.limits, admin.stats)
    limiter_box["limiter"] = limiter
    log.info(
        "dynamics emulator ready (db %s, limits %s)",
        settings.db_path,
        "on" if settings.limits.enabled else "off",
    )
    return limiter


def _apply_bare(store: Store, *, again: bool) -> dict[str, Any]:
    """Put the organization in bare mode (see :mod:`emulators.dynamics.customize`)."""
    with store.write_lock, store.engine.begin() as conn:
        result = customize.apply_bare(conn, store.tables, again=again)
        store.reload(conn)
    if result["applied"]:
        log.info(
            "bare mode: dropped %s from %s; change tracking off on %s",
            customize.SYNC_FILTER_COLUMN,
            result["dropped"],
            result["untracked"],
        )
    return result


def _parse_query(raw: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(raw, keep_blank_values=True)


def _authenticate(request: Request, issuer: TokenIssuer) -> Response | None:
    """Return a 401 for a missing, malformed, expired or wrong-audience token, else None."""
    header = request.headers.get("authorization", "")
    reason = "missing bearer token"
    if header.lower().startswith("bearer "):
        found = issuer.verify(header[7:].strip(), {origin(request).lower()})
        if found is None:
            return None
        reason = found
    tenant = issuer.credentials.tenant_id
    challenge = (
        f'Bearer error="invalid_token", error_description="{reason}", authorization_uri='
        f"{origin(request)}/{tenant}/oauth2/authorize, resource_id={origin(request)}/"
    )
    log.debug("401 at %s: %s (%s)", request.url.path, reason, time.time())
    return Response(status_code=401, headers={"WWW-Authenticate": challenge})
