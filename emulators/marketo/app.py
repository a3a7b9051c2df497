"""The Marketo REST API emulator: FastAPI routes over the store, behind the limits gate.

Layers, outermost first: the shared ``EmulatorMiddleware`` (call counts, injected faults),
``MarketoGate`` (414/413, tokens, 606/615/607), then the routes. Route handlers parse the
request, then run their database work in a worker thread under the store lock.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request  # noqa: TC002 (FastAPI reads the annotation at run time)
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from emulators.common.admin import ADMIN_PREFIX, AdminState, EmulatorMiddleware, admin_router
from emulators.common.credentials import ClientCredentials
from emulators.marketo import (
    activities,
    bulk,
    bulk_import,
    export_routes,
    history,
    lead_fields,
    lead_schema,
    leads,
    objects,
    program_routes,
    programs,
)
from emulators.marketo import store as store_tables
from emulators.marketo.envelope import (
    MarketoError,
    Params,
    decode_token,
    encode_token,
    failure,
    ok,
    read_params,
    skipped,
)
from emulators.marketo.fields import (
    CUSTOM_OBJECTS,
    LEAD_DEFAULT_FIELDS,
    OBJECT_TYPES,
    ObjectType,
    format_datetime,
    parse_datetime,
)
from emulators.marketo.limits import Limiter, LimitsConfig, MarketoGate, TokenStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from emulators.marketo.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
API_USER = "mds-sync-api@marketo-emulator.local"
PAGE_KIND = "page"
FIELD_PAGE_KIND = "fields"
# The objects Marketo's native CRM sync owns: while it is on, API writes to them answer 1018.
CRM_OWNED_KINDS = frozenset({"company", "opportunity", "opportunityrole", "salesperson"})


@dataclass
class Emulator:
    """Everything the routes share."""

    store: Store
    config: LimitsConfig
    credentials: list[ClientCredentials]
    native_sync: bool = False
    admin: AdminState = field(default_factory=AdminState)
    tokens: TokenStore = field(default_factory=TokenStore)
    limiter: Limiter = field(init=False)
    worker: bulk.BulkWorker = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.config)
        self.worker = bulk.BulkWorker(
            self.store, self.config, self.admin.stats.add_records, export_routes.export_kinds()
        )
        with self.store.begin() as conn:
            programs.ensure_default(conn, self.store)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in a thread, inside a transaction under the store lock."""

        def call() -> T:
            with self.store.begin() as conn:
                return fn(conn, *args)

        return await run_in_threadpool(call)

    def set_limits(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial limits update in place (the gate and worker share the object)."""
        merged = LimitsConfig.model_validate({**self.config.model_dump(), **(changes or {})})
        for name in LimitsConfig.model_fields:
            setattr(self.config, name, getattr(merged, name))
        return self.config.model_dump()

    def set_native_sync(self, body: Any) -> dict[str, Any]:
        """Admin ``native_sync``: ``{"enabled": true|false}`` switches the native CRM sync on or off.

        Raises:
            HTTPException: 400 without a boolean ``enabled``.
        """
        enabled = body.get("enabled") if isinstance(body, dict) else None
        if not isinstance(enabled, bool):
            raise HTTPException(400, 'body must be {"enabled": true|false}')
        self.native_sync = enabled
        return {"native_sync": enabled}

    def apply_bare(self, body: Any) -> dict[str, Any]:
        """Admin ``bare``: hide the ``msd…`` lead fields now (``{"force": true}`` even if done before)."""
        force = bool(body.get("force")) if isinstance(body, dict) else False
        with self.store.begin() as conn:
            return lead_fields.apply_bare(conn, self.store, force)


def crm_enabled(count: int) -> JSONResponse:
    """Answer a write to a CRM-owned object while the native sync is on: every record skipped 1018.

    The reference lists 1018 "CRM Enabled" among the record-level codes (§2.5), so the call
    succeeds with each record skipped; whether Marketo instead rejects the whole call is
    unconfirmed.
    """
    return ok([skipped("1018", "CRM Enabled", seq=seq) for seq in range(count)])


def render_fault(code: str) -> Response:
    """How an injected fault looks: HTTP errors for 5xx codes, Marketo envelopes otherwise."""
    if code in ("500", "502", "503", "504"):
        return PlainTextResponse(f"emulated HTTP {code}", status_code=int(code))
    return failure(code)


def _page(params: Params) -> tuple[int, int]:
    batch = params.get_int("batchSize", 300, 1, 300)
    token = params.get("nextPageToken")
    return batch, decode_token(str(token), PAGE_KIND) if token else 0


def _paged(result: list[dict[str, Any]], more: bool, offset: int) -> JSONResponse:
    extra: dict[str, Any] = {"moreResult": more}
    if more:
        extra["nextPageToken"] = encode_token(PAGE_KIND, offset + len(result))
    return ok(result, **extra)


def _wants_get(request: Request, params: Params) -> bool:
    return str(params.get("_method", "")).upper() == "GET"


def build(emu: Emulator) -> FastAPI:
    """Create the FastAPI application for ``emu``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        emu.worker.start()
        yield
        emu.worker.stop()

    app = FastAPI(title="Marketo REST API emulator", lifespan=lifespan, docs_url=None, redoc_url=None)
    stats = emu.admin.stats

    @app.exception_handler(MarketoError)
    async def marketo_error(_req: Request, exc: MarketoError) -> JSONResponse:
        return failure(exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(req: Request, exc: StarletteHTTPException) -> Response:
        if req.url.path.startswith(("/rest/", "/bulk/")):
            return failure("605" if exc.status_code == 405 else "610")
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def system_error(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return failure("611")

    # ---- identity -------------------------------------------------------------------------
    @app.api_route("/identity/oauth/token", methods=["GET", "POST"])
    async def token(request: Request) -> JSONResponse:
        params = await read_params(request)
        if params.get("grant_type") != "client_credentials":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant_type must be client_credentials",
                },
                400,
            )
        cid, secret = params.get("client_id"), params.get("client_secret")
        if not any(c.client_id == cid and c.client_secret == secret for c in emu.credentials):
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Bad client credentials"}, 401
            )
        tok = emu.tokens.issue(str(cid), emu.config.token_ttl_s)
        remaining = max(0, int(tok.expires_at - time.time()))
        return JSONResponse(
            {"access_token": tok.value, "token_type": "bearer", "expires_in": remaining, "scope": API_USER}
        )

    # ---- leads ------------------------------------------------------------------------------
    async def query_leads(params: Params) -> JSONResponse:
        schema = emu.store.lead_schema
        fields = leads.resolve_fields(schema, params.get_list("fields"), LEAD_DEFAULT_FIELDS)
        batch, offset = _page(params)
        filter_type = params.get("filterType")
        if not filter_type:
            raise MarketoError("701", "filterType cannot be blank")
        result, more = await emu.db(
            leads.query,
            schema,
            str(filter_type),
            params.get_list("filterValues"),
            fields,
            batch,
            offset,
            emu.config.max_filter_matches,
        )
        stats.add_records("lead.read", len(result))
        return _paged(result, more, offset)

    @app.get("/rest/v1/leads.json")
    async def get_leads(request: Request) -> JSONResponse:
        return await query_leads(await read_params(request))

    @app.post("/rest/v1/leads.json")
    async def post_leads(request: Request) -> JSONResponse:
        params = await read_params(request)
        if _wants_get(request, params):
            return await query_leads(params)
        records = _input(params)
        action = str(params.get("action") or "createOrUpdate")
        lookup = str(params.get("lookupField") or "email")
        outcome = await emu.db(lambda conn: leads.sync(conn, emu.store, records, action, lookup))
        stats.add_records("lead.write", outcome.created + outcome.updated)
        return ok(outcome.results)

    async def delete_leads(params: Params) -> JSONResponse:
        ids = [
            r.get("id") if isinstance(r, dict) else r for r in params.get_list("input")
        ] or params.get_list("id")
        if not ids:
            raise MarketoError("701", "input cannot be blank")
        if len(ids) > leads.MAX_BATCH:
            raise MarketoError("1003", f"Too many records: {len(ids)} (max {leads.MAX_BATCH})")
        result = await emu.db(lambda conn: leads.delete(conn, emu.store, ids))
        stats.add_records("lead.delete", sum(1 for r in result if r["status"] == "deleted"))
        return ok(result)

    @app.post("/rest/v1/leads/delete.json")
    async def post_delete_leads(request: Request) -> JSONResponse:
        return await delete_leads(await read_params(request))

    @app.delete("/rest/v1/leads.json")
    async def http_delete_leads(request: Request) -> JSONResponse:
        return await delete_leads(await read_params(request))

    @app.post("/rest/v1/leads/{lead_id}/merge.json")
    async def merge_leads(lead_id: str, request: Request) -> JSONResponse:
        params = await read_params(request)
        try:
            winner = int(lead_id)
            losers = [int(i) for i in params.get_list("leadIds") or params.get_list("leadId")]
        except ValueError:
            raise MarketoError("1003", "lead ids must be integers") from None
        await emu.db(lambda conn: leads.merge(conn, emu.store, winner, losers))
        stats.add_records("lead.merge", len(losers))
        return ok()  # a merge answers no result

    @app.get("/rest/v1/lead/{lead_id}.json")
    async def get_lead(lead_id: str, request: Request) -> JSONResponse:
        params = await read_params(request)
        fields = leads.resolve_fields(emu.store.lead_schema, params.get_list("fields"), LEAD_DEFAULT_FIELDS)
        try:
            ident = int(lead_id)
        except ValueError:
            raise MarketoError("1003", f"Invalid lead id '{lead_id}'") from None
        result = await emu.db(leads.get_by_id, ident, fields)
        stats.add_records("lead.read", len(result))
        return ok(result)

    @app.get("/rest/v1/leads/describe.json")
    async def describe_leads() -> JSONResponse:
        return ok(lead_schema.describe(emu.store.lead_schema))

    @app.get("/rest/v1/leads/describe2.json")
    async def describe2_leads() -> JSONResponse:
        return ok(lead_schema.describe2(emu.store.lead_schema, emu.native_sync))

    # ---- lead field schema (Get Lead Fields, Get Lead Field by Name, Create Lead Fields) ------------
    @app.get("/rest/v1/leads/schema/fields.json")
    async def get_lead_fields(request: Request) -> JSONResponse:
        params = await read_params(request)
        batch = params.get_int("batchSize", lead_fields.MAX_PAGE, 1, lead_fields.MAX_PAGE)
        token = params.get("nextPageToken")
        offset = decode_token(str(token), FIELD_PAGE_KIND) if token else 0
        result, more = lead_fields.list_fields(emu.store.lead_schema, batch, offset)
        extra: dict[str, Any] = {"moreResult": more}
        if more:
            extra["nextPageToken"] = encode_token(FIELD_PAGE_KIND, offset + len(result))
        return ok(result, **extra)

    @app.get("/rest/v1/leads/schema/fields/{name}.json")
    async def get_lead_field(name: str) -> JSONResponse:
        return ok([lead_fields.get_field(emu.store.lead_schema, name)])

    @app.post("/rest/v1/leads/schema/fields.json")
    async def create_lead_fields(request: Request) -> JSONResponse:
        # Always a write (no _method=GET here), so its call key in the stats is the write count.
        params = await read_params(request)
        inputs = params.get("input")
        if inputs is not None and not isinstance(inputs, list):
            raise MarketoError("1003", "input must be an array")
        result, created = await emu.db(lambda conn: lead_fields.create(conn, emu.store, inputs or []))
        stats.add_records("leadfield.write", created)
        return ok(result)

    @app.get("/rest/v1/leads/partitions.json")
    async def partitions() -> JSONResponse:
        return ok([{"id": 1, "name": "Default", "description": "Initial system lead partition"}])

    # ---- activities ---------------------------------------------------------------------------
    @app.get("/rest/v1/activities/types.json")
    async def activity_types() -> JSONResponse:
        return ok(activities.ACTIVITY_TYPES)

    @app.get("/rest/v1/activities/pagingtoken.json")
    async def paging_token(request: Request) -> JSONResponse:
        params = await read_params(request)
        since = params.get("sinceDatetime")
        if not since:
            raise MarketoError("701", "sinceDatetime cannot be blank")
        try:
            when = format_datetime(parse_datetime(str(since)))
        except ValueError:
            raise MarketoError("704", "Invalid date format") from None
        return ok(None, nextPageToken=await emu.db(activities.token_since, when))

    async def feed(params: Params, type_ids: list[int], fields: list[str] | None, kind: str) -> JSONResponse:
        token = params.get("nextPageToken")
        if not token:
            raise MarketoError("701", "nextPageToken cannot be blank")
        batch = params.get_int("batchSize", 300, 1, 300)
        lead_ids = params.get_list("leadIds")
        if len(lead_ids) > 30:
            raise MarketoError("1003", "At most 30 leadIds are allowed")
        try:
            ids = [int(i) for i in lead_ids]
        except (TypeError, ValueError):
            raise MarketoError("1003", f"Invalid leadIds {lead_ids!r}") from None
        result, nxt, more = await emu.db(activities.page, str(token), type_ids, batch, ids, fields)
        stats.add_records(kind, len(result))
        return ok(result, nextPageToken=nxt, moreResult=more)

    @app.get("/rest/v1/activities.json")
    async def get_activities(request: Request) -> JSONResponse:
        params = await read_params(request)
        return await feed(
            params, activities.parse_type_ids(params.get_list("activityTypeIds")), None, "activity.read"
        )

    @app.get("/rest/v1/activities/leadchanges.json")
    async def lead_changes(request: Request) -> JSONResponse:
        params = await read_params(request)
        names = params.get_list("fields")
        if not names:
            raise MarketoError("701", "fields cannot be blank")
        leads.resolve_fields(emu.store.lead_schema, names, ())
        return await feed(
            params, [activities.NEW_LEAD, activities.CHANGE_DATA_VALUE], names, "leadchange.read"
        )

    @app.get("/rest/v1/activities/deletedleads.json")
    async def deleted_leads(request: Request) -> JSONResponse:
        return await feed(await read_params(request), [activities.DELETE_LEAD], None, "deletedlead.read")

    # ---- companies, opportunities, roles, sales persons, custom objects ----------------------------
    def register_object(prefix: str, otype: ObjectType) -> None:
        crm_owned = otype.kind in CRM_OWNED_KINDS

        async def query(params: Params) -> JSONResponse:
            filter_type = params.get("filterType")
            if not filter_type:
                raise MarketoError("701", "filterType cannot be blank")
            group = objects.filter_group(otype, str(filter_type))
            fields = objects.resolve_fields(otype, params.get_list("fields"))
            batch, offset = _page(params)
            raw_input = params.get("input")
            if isinstance(raw_input, list):
                keys = [tuple(r.get(g) for g in group) for r in raw_input if isinstance(r, dict)]
            elif len(group) == 1:
                keys = [(v,) for v in params.get_list("filterValues")]
            else:
                raise MarketoError("1003", "A compound filterType needs 'input' records")
            result, more = await emu.db(objects.query, otype, group, keys, fields, batch, offset)
            stats.add_records(f"{otype.kind}.read", len(result))
            return _paged(result, more, offset)

        async def get_records(request: Request) -> JSONResponse:
            return await query(await read_params(request))

        async def post_records(request: Request) -> JSONResponse:
            params = await read_params(request)
            if _wants_get(request, params):
                return await query(params)
            records = _input(params)
            if crm_owned and emu.native_sync:
                return crm_enabled(len(records))
            action = str(params.get("action") or "createOrUpdate")
            dedupe_by = str(params.get("dedupeBy") or "dedupeFields")
            outcome = await emu.db(
                lambda conn: objects.sync(conn, emu.store, otype, records, action, dedupe_by)
            )
            stats.add_records(f"{otype.kind}.write", outcome.written)
            return ok(outcome.results)

        async def delete_records(request: Request) -> JSONResponse:
            params = await read_params(request)
            records = _input(params)
            if crm_owned and emu.native_sync:
                return crm_enabled(len(records))
            delete_by = str(params.get("deleteBy") or "dedupeFields")
            result = await emu.db(objects.delete, otype, records, delete_by)
            stats.add_records(f"{otype.kind}.delete", sum(1 for r in result if r["status"] == "deleted"))
            return ok(result)

        async def describe() -> JSONResponse:
            return ok([objects.describe(otype)])

        app.add_api_route(f"{prefix}.json", get_records, methods=["GET"])
        app.add_api_route(f"{prefix}.json", post_records, methods=["POST"])
        app.add_api_route(f"{prefix}/delete.json", delete_records, methods=["POST"])
        app.add_api_route(f"{prefix}/describe.json", describe, methods=["GET"])

    for path, otype in OBJECT_TYPES.items():
        register_object(f"/rest/v1/{path}", otype)
    for api_name, otype in CUSTOM_OBJECTS.items():
        register_object(f"/rest/v1/customobjects/{api_name}", otype)

    @app.get("/rest/v1/customobjects.json")
    async def list_custom_objects(request: Request) -> JSONResponse:
        params = await read_params(request)
        names = set(params.get_list("names"))
        return ok([objects.describe(o) for n, o in CUSTOM_OBJECTS.items() if not names or n in names])

    # ---- bulk extract (leads, activities, program members), programs and membership -------------
    export_routes.register(app, emu, file_response)
    program_routes.register(app, emu)

    # ---- bulk import --------------------------------------------------------------------------
    @app.post("/bulk/v1/leads.json")
    async def import_leads(request: Request) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise MarketoError("613")
        try:
            form = await request.form(max_part_size=emu.config.max_import_bytes)
        except Exception:
            raise MarketoError("613") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise MarketoError("701", "file cannot be blank")
        data = await upload.read()
        fmt = str(request.query_params.get("format") or form.get("format") or "")
        if not fmt:
            raise MarketoError("701", "format cannot be blank")
        lookup = str(request.query_params.get("lookupField") or form.get("lookupField") or "email")
        job = await emu.db(
            lambda conn: bulk_import.create_import(conn, emu.store, emu.config, data, fmt, lookup)
        )
        return ok([job])

    @app.get("/bulk/v1/leads/batch/{batch_id}.json")
    async def import_status(batch_id: int) -> JSONResponse:
        return ok([await emu.db(bulk_import.import_view, batch_id)])

    @app.get("/bulk/v1/leads/batch/{batch_id}/{kind}.json")
    async def import_report(batch_id: int, kind: str) -> Response:
        if kind not in ("failures", "warnings"):
            raise MarketoError("610")
        view = await emu.db(bulk_import.import_view, batch_id)
        path = bulk_import.import_report(emu.store, batch_id, kind)
        if view["status"] not in ("Complete", "Failed") or not path.exists():
            return PlainTextResponse(f"Import batch {batch_id} is not complete", status_code=404)
        return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/csv")

    # ---- usage --------------------------------------------------------------------------------
    @app.get("/rest/v1/stats/usage.json")
    async def usage() -> JSONResponse:
        return ok(
            [
                {"date": d, "total": n, "users": [{"userId": API_USER, "count": n}]}
                for d, n in sorted(emu.limiter.usage.items())
            ]
        )

    @app.get("/rest/v1/stats/errors.json")
    async def error_stats() -> JSONResponse:
        return ok(
            [
                {
                    "date": d,
                    "total": sum(c.values()),
                    "errors": [{"errorCode": k, "count": v} for k, v in sorted(c.items())],
                }
                for d, c in sorted(emu.limiter.errors.items())
            ]
        )

    # ---- admin ----------------------------------------------------------------------------------
    def reset_counters() -> dict[str, Any]:
        emu.limiter.reset()
        return emu.limiter.snapshot()

    def reset_data() -> dict[str, Any]:
        # Ids keep counting up: Marketo never reuses one, and clients may still hold old ones.
        with emu.store.begin() as conn:
            # Programs stay: they are assets, like the lead field schema.
            for table in (store_tables.leads, store_tables.activities, store_tables.objects,
                          store_tables.export_jobs, store_tables.import_jobs,
                          store_tables.program_members):  # fmt: skip
                conn.execute(table.delete())
        emu.limiter.reset()
        emu.worker.report_fault = None
        stats.reset()
        return {"ok": True}

    def set_up(action: Callable[[Any, Store, Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
        def run(body: Any) -> dict[str, Any]:
            with emu.store.begin() as conn:
                return action(conn, emu.store, body)

        return run

    def set_report_fault(body: Any) -> dict[str, Any]:
        mode = (body or {}).get("mode")
        if mode not in (None, "drop-row", "blank-key"):
            raise HTTPException(400, "mode must be drop-row, blank-key or null")
        emu.worker.report_fault = mode
        return {"mode": mode}

    app.include_router(
        admin_router(
            emu.admin,
            extra={
                "expire-tokens": lambda: {"expired": emu.tokens.expire_all()},
                "limits": lambda body: emu.set_limits(body or {}),
                "reset-counters": reset_counters,
                "reset": reset_data,
                "import-report-fault": set_report_fault,
                "bare": emu.apply_bare,
                "native_sync": emu.set_native_sync,
                "programs": set_up(history.add_programs),
                "program-members": set_up(history.add_members),
                "activities": set_up(history.add_activities),
            },
        )
    )

    @app.get(f"{ADMIN_PREFIX}/limits")
    async def get_limits() -> dict[str, Any]:
        return {**emu.config.model_dump(), "counters": emu.limiter.snapshot()}

    @app.put(f"{ADMIN_PREFIX}/limits")
    async def put_limits(request: Request) -> dict[str, Any]:
        body = await request.json() if await request.body() else {}
        return emu.set_limits(body)

    app.add_middleware(MarketoGate, tokens=emu.tokens, limiter=emu.limiter, stats=stats)
    app.add_middleware(EmulatorMiddleware, state=emu.admin, render_fault=render_fault)
    return app


def _input(params: Params) -> list[Any]:
    """Return the ``input`` array of a write, enforcing Marketo's 300-record batch limit.

    Raises:
        MarketoError: 701 when missing, 1003 above 300 records.
    """
    records = params.get("input")
    if not isinstance(records, list) or not records:
        raise MarketoError("701", "input cannot be blank")
    if len(records) > leads.MAX_BATCH:
        raise MarketoError("1003", f"Too many records in input: {len(records)} (max {leads.MAX_BATCH})")
    return records


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive byte range of a single-range ``Range`` header, or None if unusable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            length = int(last)
            return (max(0, size - length), size - 1) if length > 0 else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    return (start, min(end, size - 1)) if start <= end and start < size else None


def file_response(path: Path, range_header: str | None) -> Response:
    """Serve a bulk file whole (200) or a byte range of it (206), as Marketo does (reference §5.4)."""
    size = path.stat().st_size
    headers = {"Accept-Ranges": "bytes"}
    if range_header:
        span = _parse_range(range_header, size)
        if span is None:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = span
        headers.update(
            {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
        )
        return StreamingResponse(
            _read(path, start, end + 1), status_code=206, headers=headers, media_type="text/csv"
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(_read(path, 0, size), headers=headers, media_type="text/csv")


def _read(path: Path, start: int, stop: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = stop - start
        while remaining > 0:
            chunk = fh.read(min(1 << 20, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def environment_credentials() -> list[ClientCredentials]:
    """Extra credentials from ``MDS_MARKETO_CLIENT_ID``/``..._SECRET`` (optional)."""
    cid, secret = os.environ.get("MDS_MARKETO_CLIENT_ID"), os.environ.get("MDS_MARKETO_CLIENT_SECRET")
    return [ClientCredentials(cid, secret)] if cid and secret else []
