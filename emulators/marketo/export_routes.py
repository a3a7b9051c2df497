"""Bulk extract routes, the same six for every exportable object (reference §5.1).

``/bulk/v1/{entity}/export/create.json``, ``…/{exportId}/enqueue.json``, ``…/status.json``,
``…/file.json`` (whole or a ``Range``; a text 404 until the job completes and after the 7 days
a file is kept), ``…/cancel.json`` and ``GET /bulk/v1/{entity}/export.json`` (jobs of the last 7
days), for ``leads``, ``activities`` and ``program/members``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # noqa: TC002 (FastAPI reads the annotation at run time)
from starlette.responses import JSONResponse, PlainTextResponse, Response

from emulators.marketo import bulk
from emulators.marketo.activity_export import ACTIVITY_EXPORT
from emulators.marketo.envelope import MarketoError, ok, read_params
from emulators.marketo.fields import parse_datetime
from emulators.marketo.member_export import MEMBER_EXPORT

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from emulators.marketo.app import Emulator

FILE_RETENTION = dt.timedelta(days=7)  # reference §5.3 (another page says 10 days)


def export_kinds() -> dict[str, bulk.ExportKind]:
    """Every exportable object by entity, for the bulk worker."""
    return {k.entity: k for k in (bulk.LEAD_EXPORT, ACTIVITY_EXPORT, MEMBER_EXPORT)}


def _expired(row: Any) -> bool:
    finished = row["finishedAt"]
    return bool(finished) and dt.datetime.now(dt.UTC) - parse_datetime(finished) > FILE_RETENTION


def register(app: FastAPI, emu: Emulator, file_response: Callable[[Path, str | None], Response]) -> None:
    """Add the export routes of every object to ``app``."""
    for kind in export_kinds().values():
        _register_kind(app, emu, kind, file_response)


def _register_kind(
    app: FastAPI, emu: Emulator, kind: bulk.ExportKind, file_response: Callable[[Path, str | None], Response]
) -> None:
    prefix = f"/bulk/v1/{kind.entity}/export"
    entity = kind.entity

    async def create(request: Request) -> JSONResponse:
        params = await read_params(request)
        return ok([await emu.db(bulk.create_export, emu.store, emu.config, kind, params.json_body)])

    async def enqueue(export_id: str) -> JSONResponse:
        return ok([await emu.db(bulk.enqueue_export, emu.config, export_id, entity)])

    async def cancel(export_id: str) -> JSONResponse:
        return ok([await emu.db(bulk.cancel_export, export_id, entity)])

    async def status(export_id: str) -> JSONResponse:
        return ok([bulk.export_view(await emu.db(bulk.get_export, export_id, entity))])

    async def jobs(request: Request) -> JSONResponse:
        params = await read_params(request)
        return ok(await emu.db(bulk.list_exports, [str(s) for s in params.get_list("status")], entity))

    async def file(export_id: str, request: Request) -> Response:
        try:
            row = await emu.db(bulk.get_export, export_id, entity)
        except MarketoError:
            row = None
        if row is None or row["status"] != "Completed" or not row["filePath"] or _expired(row):
            # Marketo answers a file request for an unfinished, unknown or expired job with a text 404.
            return PlainTextResponse(f"Export job {export_id} is not completed", status_code=404)
        path = Path(row["filePath"])
        if not path.exists():
            return PlainTextResponse(f"Export file of job {export_id} is gone", status_code=404)
        return file_response(path, request.headers.get("range"))

    app.add_api_route(f"{prefix}/create.json", create, methods=["POST"])
    app.add_api_route(f"{prefix}/{{export_id}}/enqueue.json", enqueue, methods=["POST"])
    app.add_api_route(f"{prefix}/{{export_id}}/cancel.json", cancel, methods=["POST"])
    app.add_api_route(f"{prefix}/{{export_id}}/status.json", status, methods=["GET"])
    app.add_api_route(f"{prefix}/{{export_id}}/file.json", file, methods=["GET"])
    app.add_api_route(f"/bulk/v1/{entity}/export.json", jobs, methods=["GET"])
