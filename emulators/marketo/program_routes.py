"""Routes of programs (asset API), channels and program membership (lead database API).

Asset API: ``GET /rest/asset/v1/programs.json`` (browse: ``offset``, ``maxReturn`` ≤ 200 default 20,
``status``, ``earliestUpdatedAt``/``latestUpdatedAt``), ``POST`` the same path (Create Program,
form-encoded ``name``, ``folder``, ``type``, ``channel``, ``description``),
``GET /rest/asset/v1/program/{id}.json``, ``GET /rest/asset/v1/program/byName.json?name=``,
``GET /rest/asset/v1/channels.json`` and ``…/channel/byName.json?name=``.

Lead database: ``GET /rest/v1/programs/members/describe.json``,
``GET /rest/v1/programs/{programId}/members.json`` (also ``POST …?_method=GET``),
``POST …/members/status.json`` (Sync Program Member Status), ``POST …/members/delete.json``,
``POST /rest/v1/leads/programs/{programId}/status.json`` (Change Lead Program Status),
``GET /rest/v1/leads/programs/{programId}.json`` (Get Leads by Program Id),
``GET /rest/v1/leads/{leadId}/programMembership.json`` (Get Programs by Lead Id) and
``GET /rest/v1/leads/programs.json?id=`` (the issue's name for a lead's memberships; not in
Adobe's endpoint list, so unconfirmed: it answers Get Programs by Lead Id's records for each id,
with ``leadId``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # noqa: TC002 (FastAPI reads the annotation at run time)
from starlette.responses import JSONResponse  # noqa: TC002 (FastAPI reads return annotations)

from emulators.marketo import leads, member_reads, members, programs
from emulators.marketo.envelope import MarketoError, Params, decode_token, encode_token, ok, read_params
from emulators.marketo.fields import LEAD_DEFAULT_FIELDS, format_datetime, parse_datetime

if TYPE_CHECKING:
    from fastapi import FastAPI

    from emulators.marketo.app import Emulator

MEMBER_PAGE = "members"
MAX_INPUT = 300
MEMBER_WINDOW_DAYS = 7  # Get Program Members' updatedAt range


def _asset(result: list[dict[str, Any]]) -> JSONResponse:
    """An asset-API envelope; no match is success with a warning and no ``result``."""
    if not result:
        return ok(None, warnings=[programs.NO_ASSETS], errors=[])
    return ok(result, warnings=[], errors=[])


def _page(params: Params) -> tuple[int, int]:
    batch = params.get_int("batchSize", MAX_INPUT, 1, MAX_INPUT)
    token = params.get("nextPageToken")
    return batch, decode_token(str(token), MEMBER_PAGE) if token else 0


def _paged(result: list[dict[str, Any]], more: bool, offset: int) -> JSONResponse:
    extra: dict[str, Any] = {"moreResult": more}
    if more:
        extra["nextPageToken"] = encode_token(MEMBER_PAGE, offset + len(result))
    return ok(result, **extra)


def _input(params: Params) -> list[Any]:
    records = params.get("input")
    if not isinstance(records, list) or not records:
        raise MarketoError("701", "input cannot be blank")
    if len(records) > MAX_INPUT:
        raise MarketoError("1003", f"Too many records in input: {len(records)} (max {MAX_INPUT})")
    return records


def _ints(values: list[Any], name: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise MarketoError("1003", f"Invalid {name} {values!r}") from None


def _stamp(value: Any) -> str | None:
    if not value:
        return None
    try:
        return format_datetime(parse_datetime(str(value)))
    except ValueError:
        raise MarketoError("704", "Invalid date format") from None


def register(app: FastAPI, emu: Emulator) -> None:
    """Add the program, channel and membership routes to ``app``."""
    stats = emu.admin.stats

    # ---- asset API --------------------------------------------------------------------------
    @app.get("/rest/asset/v1/programs.json")
    async def browse_programs(request: Request) -> JSONResponse:
        params = await read_params(request)
        offset = params.get_int("offset", 0, 0, 10**9)
        max_return = params.get_int("maxReturn", 20, 1, programs.MAX_RETURN)
        status = params.get("status")
        earliest, latest = (_stamp(params.get(k)) for k in ("earliestUpdatedAt", "latestUpdatedAt"))
        result = await emu.db(programs.browse, offset, max_return, status, earliest, latest)
        return _asset(result)

    @app.post("/rest/asset/v1/programs.json")
    async def create_program(request: Request) -> JSONResponse:
        params = await read_params(request)
        spec = {k: params.get(k) for k in ("name", "type", "channel", "description", "folder")}
        return _asset([await emu.db(programs.create, emu.store, spec)])

    @app.get("/rest/asset/v1/program/byName.json")
    async def program_by_name(request: Request) -> JSONResponse:
        name = (await read_params(request)).get("name")
        if not name:
            raise MarketoError("701", "name cannot be blank")
        row = await emu.db(lambda conn: programs.find(conn, name=str(name)))
        return _asset([programs.view(row, detail=True)] if row else [])

    @app.get("/rest/asset/v1/program/{program_id}.json")
    async def program_by_id(program_id: str) -> JSONResponse:
        ident = _ints([program_id], "program id")[0]
        row = await emu.db(lambda conn: programs.find(conn, ident))
        return _asset([programs.view(row, detail=True)] if row else [])

    @app.get("/rest/asset/v1/channels.json")
    async def channels(request: Request) -> JSONResponse:
        params = await read_params(request)
        offset = params.get_int("offset", 0, 0, 10**9)
        max_return = params.get_int("maxReturn", 20, 1, programs.MAX_RETURN)
        views = [programs.channel_view(c) for c in programs.CHANNELS.values()]
        return _asset(views[offset : offset + max_return])

    @app.get("/rest/asset/v1/channel/byName.json")
    async def channel_by_name(request: Request) -> JSONResponse:
        channel = programs.CHANNELS.get(str((await read_params(request)).get("name") or ""))
        return _asset([programs.channel_view(channel)] if channel else [])

    # ---- program members ------------------------------------------------------------------------
    @app.get("/rest/v1/programs/members/describe.json")
    async def describe_members() -> JSONResponse:
        return ok([member_reads.describe()])

    async def query_members(program_id: str, params: Params) -> JSONResponse:
        filter_type = str(params.get("filterType") or "")
        if not filter_type:
            raise MarketoError("701", "filterType cannot be blank")
        span = None
        values = params.get_list("filterValues")
        if filter_type == "updatedAt":
            span = member_reads.window(params.get("startAt"), params.get("endAt"), MEMBER_WINDOW_DAYS)
        elif filter_type not in member_reads.MEMBER_FIELDS:
            raise MarketoError("1006", f"Field '{filter_type}' not found")
        elif not member_reads.MEMBER_FIELDS[filter_type].searchable:
            raise MarketoError("1011", f"Field '{filter_type}' not supported")
        elif not values:
            raise MarketoError("701", "filterValues cannot be blank")
        elif len(values) > MAX_INPUT:
            raise MarketoError("1003", f"Too many filterValues: {len(values)} (max {MAX_INPUT})")
        fields = [str(f) for f in params.get_list("fields")] or list(member_reads.DEFAULT_FIELDS)
        unknown = [f for f in fields if f not in member_reads.MEMBER_FIELDS]
        if unknown:
            raise MarketoError("1006", f"Field '{unknown[0]}' not found")
        batch, offset = _page(params)

        def read(conn: Any) -> tuple[list[dict[str, Any]], bool]:
            program = programs.require(conn, program_id)
            return member_reads.query(conn, program, filter_type, values, span, fields, batch, offset)

        result, more = await emu.db(read)
        stats.add_records("programmember.read", len(result))
        return _paged(result, more, offset)

    @app.get("/rest/v1/programs/{program_id}/members.json")
    async def get_members(program_id: str, request: Request) -> JSONResponse:
        return await query_members(program_id, await read_params(request))

    @app.post("/rest/v1/programs/{program_id}/members.json")
    async def post_members(program_id: str, request: Request) -> JSONResponse:
        params = await read_params(request)
        if str(params.get("_method", "")).upper() != "GET":
            # Sync Program Member Data writes custom member fields, which are not emulated.
            raise MarketoError("610", "Sync Program Member Data is not emulated")
        return await query_members(program_id, params)

    async def change_status(program_id: str, request: Request, key: str, status_key: str) -> JSONResponse:
        params = await read_params(request)
        records = _input(params)
        status = params.get(status_key)
        if not status:
            raise MarketoError("701", f"{status_key} cannot be blank")

        def write(conn: Any) -> list[dict[str, Any]]:
            program = programs.require(conn, program_id)
            return members.set_status(
                conn, emu.store, program, records, str(status), key=key, members_only=key == "id"
            )

        result = await emu.db(write)
        stats.add_records("programmember.write", sum(1 for r in result if r["status"] != "skipped"))
        return ok(result)

    @app.post("/rest/v1/programs/{program_id}/members/status.json")
    async def sync_member_status(program_id: str, request: Request) -> JSONResponse:
        return await change_status(program_id, request, "leadId", "statusName")

    @app.post("/rest/v1/leads/programs/{program_id}/status.json")
    async def change_lead_program_status(program_id: str, request: Request) -> JSONResponse:
        return await change_status(program_id, request, "id", "status")

    @app.post("/rest/v1/programs/{program_id}/members/delete.json")
    async def delete_members(program_id: str, request: Request) -> JSONResponse:
        records = _input(await read_params(request))

        def write(conn: Any) -> list[dict[str, Any]]:
            return members.remove(conn, emu.store, programs.require(conn, program_id), records)

        result = await emu.db(write)
        stats.add_records("programmember.delete", sum(1 for r in result if r["status"] == "deleted"))
        return ok(result)

    # ---- a lead's memberships, a program's leads ------------------------------------------------
    async def leads_by_program(program_id: str, params: Params) -> JSONResponse:
        schema = emu.store.lead_schema
        fields = leads.resolve_fields(schema, params.get_list("fields"), LEAD_DEFAULT_FIELDS)
        batch, offset = _page(params)

        def read(conn: Any) -> tuple[list[dict[str, Any]], bool]:
            program = programs.require(conn, program_id)
            return member_reads.leads_in_program(conn, program, fields, batch, offset)

        result, more = await emu.db(read)
        stats.add_records("lead.read", len(result))
        return _paged(result, more, offset)

    @app.get("/rest/v1/leads/programs/{program_id}.json")
    async def get_leads_by_program(program_id: str, request: Request) -> JSONResponse:
        return await leads_by_program(program_id, await read_params(request))

    @app.post("/rest/v1/leads/programs/{program_id}.json")
    async def post_leads_by_program(program_id: str, request: Request) -> JSONResponse:
        params = await read_params(request)
        if str(params.get("_method", "")).upper() != "GET":
            raise MarketoError("605")
        return await leads_by_program(program_id, params)

    async def lead_memberships(lead_ids: list[int], params: Params, with_lead: bool) -> JSONResponse:
        program_ids: list[int] = []
        if params.get("filterType"):
            if params.get("filterType") != "id":
                raise MarketoError("1003", "filterType must be id (program ids)")
            program_ids = _ints(params.get_list("filterValues"), "filterValues")
        batch, offset = _page(params)
        rows = await emu.db(member_reads.memberships, lead_ids, program_ids)
        page = rows[offset : offset + batch]
        if not with_lead:
            page = [{k: v for k, v in r.items() if k != "leadId"} for r in page]
        return _paged(page, offset + len(page) < len(rows), offset)

    @app.get("/rest/v1/leads/{lead_id}/programMembership.json")
    async def programs_by_lead(lead_id: str, request: Request) -> JSONResponse:
        return await lead_memberships(_ints([lead_id], "lead id"), await read_params(request), False)

    @app.get("/rest/v1/leads/programs.json")
    async def memberships_by_lead_ids(request: Request) -> JSONResponse:
        params = await read_params(request)
        ids = _ints(params.get_list("id"), "id")
        if not ids:
            raise MarketoError("701", "id cannot be blank")
        if len(ids) > MAX_INPUT:
            raise MarketoError("1003", f"Too many ids: {len(ids)} (max {MAX_INPUT})")
        return await lead_memberships(ids, params, True)
