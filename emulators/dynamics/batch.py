"""``$batch``: multipart requests with change sets (``dynamics-web-api.md`` §6).

- At most 1,000 requests per batch; batches do not nest; GET is not allowed in a change set.
- A change set is atomic: its requests run in one SAVEPOINT, rolled back when one fails.
- ``Content-ID: n`` lets later requests in the same change set say ``$n`` (URL or bind).
- Without ``Prefer: odata.continue-on-error`` the first failure stops the batch, which answers
  400 with that failure as its only part (as the reference describes). With it, the batch
  answers 200 and a failed change set is replaced by its error response.
- A rolled-back part that changed a table definition (``EntityDefinitions``) takes the live
  schema back with it.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from emulators.dynamics.errors import ODataError
from emulators.dynamics.service import API_PATH, ApiRequest, ApiResponse, Refs
from emulators.dynamics.store import raw_connection

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from emulators.dynamics.service import WebApi

MAX_REQUESTS = 1000
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


@dataclass
class Part:
    """One request of a batch, with its Content-ID."""

    request: ApiRequest
    content_id: str | None = None


@dataclass
class ChangeSet:
    parts: list[Part] = field(default_factory=list)


def _boundary(content_type: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not match:
        raise ODataError(400, "0x80040203", "$batch needs Content-Type: multipart/mixed; boundary=...")
    return match.group(1)


def _split(body: bytes, boundary: str) -> list[bytes]:
    """Return the parts between ``--boundary`` delimiters (without the closing one)."""
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(chunk.lstrip(b"\r\n").removesuffix(b"\r\n").removesuffix(b"\n"))
    return parts


def _headers_and_body(raw: bytes) -> tuple[dict[str, str], bytes]:
    text = raw.replace(b"\r\n", b"\n")
    head, _, body = text.partition(b"\n\n")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\n"):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers, body


def _inner_request(raw: bytes, base: str, outer_headers: dict[str, str]) -> Part:
    mime, http = _headers_and_body(raw)
    http = http.lstrip(b"\n")
    request_line, _, remainder = http.partition(b"\n")
    bits = request_line.decode().split()
    if len(bits) < 2:
        raise ODataError(400, "0x80040203", f"Bad request line in $batch part: {request_line[:80]!r}")
    if len(bits) > 2 and bits[-1].upper().startswith("HTTP/"):
        bits = [bits[0], " ".join(bits[1:-1])]  # tolerate unencoded spaces in the URL
    method, url = bits[0].upper(), bits[1]
    headers, body = _headers_and_body(remainder)
    if not remainder.strip() or remainder.startswith(b"\n"):
        headers, body = {}, remainder.strip()
    split = urlsplit(url)
    # Dataverse percent-decodes a part's URL as it does a top-level request's (where the ASGI
    # server decodes the path): an alternate-key value such as 'a%20b%2Fc%26%C3%A9' must match
    # the stored "a b/c&é". Query values are decoded by parse_qsl below.
    path = unquote(split.path, encoding="utf-8", errors="strict")
    if API_PATH in path:
        path = path.split(API_PATH, 1)[1]
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    merged = {"authorization": outer_headers.get("authorization", ""), **headers}
    request = ApiRequest(method, path.lstrip("/"), query, merged, body.strip(), base)
    return Part(request, mime.get("content-id") or headers.get("content-id"))


def parse_batch(body: bytes, content_type: str, base: str, headers: dict[str, str]) -> list[Part | ChangeSet]:
    """Parse a ``$batch`` body into requests and change sets.

    Raises:
        ODataError: 400 for a malformed body, GET in a change set, or over 1,000 requests.
    """
    items: list[Part | ChangeSet] = []
    total = 0
    for raw in _split(body, _boundary(content_type)):
        mime, inner = _headers_and_body(raw)
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            changeset = ChangeSet()
            for sub in _split(inner, _boundary(ctype)):
                part = _inner_request(sub, base, headers)
                if part.request.method == "GET":
                    raise ODataError(400, "0x80040203", "GET requests are not allowed inside a change set")
                changeset.parts.append(part)
            total += len(changeset.parts)
            items.append(changeset)
        else:
            items.append(_inner_request(raw, base, headers))
            total += 1
    if total > MAX_REQUESTS:
        raise ODataError(
            400,
            "0x8005f103",
            f"The number of requests in the batch ({total}) exceeds the limit of {MAX_REQUESTS}.",
        )  # code unconfirmed
    return items


def _render_response(resp: ApiResponse, content_id: str | None, location: bool) -> bytes:
    reason = HTTPStatus(resp.status).phrase
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"HTTP/1.1 {resp.status} {reason}"]
    headers = dict(resp.headers)
    if location and "OData-EntityId" in headers:
        headers["Location"] = headers["OData-EntityId"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("")
    return ("\r\n".join(lines) + "\r\n").encode() + resp.body + b"\r\n"


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    delimiter = f"--{boundary}\r\n".encode()
    return b"".join(delimiter + part for part in parts) + f"--{boundary}--\r\n".encode()


def run_batch(
    api: WebApi, body: bytes, content_type: str, req_headers: dict[str, str], base: str
) -> ApiResponse:
    """Parse and run a ``$batch`` request; return the multipart response."""
    try:
        items = parse_batch(body, content_type, base, req_headers)
    except ODataError as err:
        return ApiResponse.error(err)
    continue_on_error = "odata.continue-on-error" in ApiRequest("", "", {}, req_headers, b"", base).prefer()
    outer = f"batchresponse_{uuid.uuid4()}"
    rendered: list[bytes] = []
    with api.store.write_lock, api.store.engine.begin() as conn:
        for item in items:
            if isinstance(item, Part):
                resp = _run_one(api, conn, item, {})
                if resp.status >= 400 and not continue_on_error:
                    return _batch_failure(outer, resp, item.content_id)
                rendered.append(_render_response(resp, item.content_id, location=False))
                continue
            ok, responses, failed = _run_changeset(api, conn, item)
            if not ok:
                if not continue_on_error:
                    return _batch_failure(outer, failed[0], failed[1])
                rendered.append(_render_response(failed[0], failed[1], location=False))
                continue
            inner = f"changesetresponse_{uuid.uuid4()}"
            part = f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode() + _multipart(
                inner, responses
            )
            rendered.append(part)
    body_out = _multipart(outer, rendered)
    return ApiResponse(
        200, {"Content-Type": f"multipart/mixed; boundary={outer}", "OData-Version": "4.0"}, body_out
    )


def _batch_failure(boundary: str, resp: ApiResponse, content_id: str | None) -> ApiResponse:
    body = _multipart(boundary, [_render_response(resp, content_id, location=False)])
    return ApiResponse(
        400, {"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"}, body
    )


def _customizes(parts: list[Part]) -> bool:
    """Whether any of ``parts`` writes a table definition (the live schema changes with it)."""
    return any(
        p.request.method != "GET" and p.request.path.strip("/").startswith("EntityDefinitions") for p in parts
    )


def _rolled_back(api: WebApi, conn: Connection, parts: list[Part]) -> None:
    """After a rollback: re-read the schema if one of ``parts`` may have changed it in memory."""
    if _customizes(parts):
        api.store.reload(conn)


class _Savepoint:
    """A SAVEPOINT sent straight to the DB-API connection under ``conn``.

    The same statements SQLAlchemy's ``begin_nested`` sends, without its per-call bookkeeping,
    which cost more than SQLite itself when every part of a 1,000-part batch takes one. A
    ``begin_nested`` inside (a table customization) nests under it as usual.
    """

    _names = itertools.count()

    def __init__(self, conn: Connection) -> None:
        self._raw = raw_connection(conn)
        self._name = f"part_{next(self._names)}"
        self._raw.execute(f"SAVEPOINT {self._name}")

    def commit(self) -> None:
        self._raw.execute(f"RELEASE SAVEPOINT {self._name}")

    def rollback(self) -> None:
        self._raw.execute(f"ROLLBACK TO SAVEPOINT {self._name}")
        self._raw.execute(f"RELEASE SAVEPOINT {self._name}")


def _run_one(api: WebApi, conn: Connection, part: Part, refs: Refs) -> ApiResponse:
    """Run one request in its own SAVEPOINT (a failed request leaves nothing behind)."""
    savepoint = _Savepoint(conn)
    try:
        resp = api.dispatch(conn, part.request, refs)
    except ODataError as err:
        savepoint.rollback()
        _rolled_back(api, conn, [part])
        return ApiResponse.error(err)
    savepoint.commit()
    return resp


def _run_changeset(
    api: WebApi, conn: Connection, changeset: ChangeSet
) -> tuple[bool, list[bytes], tuple[ApiResponse, str | None]]:
    """Run a change set atomically; return (ok, rendered parts, the failure if any)."""
    refs: Refs = {}
    rendered: list[bytes] = []
    savepoint = _Savepoint(conn)
    for part in changeset.parts:
        try:
            resp = api.dispatch(conn, part.request, refs)
        except ODataError as err:
            savepoint.rollback()
            _rolled_back(api, conn, changeset.parts)
            return False, [], (ApiResponse.error(err), part.content_id)
        if part.content_id and "OData-EntityId" in resp.headers:
            entity_url = resp.headers["OData-EntityId"]
            set_name, _, rid = entity_url.rsplit("/", 1)[1].partition("(")
            table = api.store.by_set(set_name)
            if table is not None:
                refs[f"${part.content_id}"] = (table, rid.rstrip(")"))
        rendered.append(_render_response(resp, part.content_id, location=True))
    savepoint.commit()
    return True, rendered, (ApiResponse(200), None)
