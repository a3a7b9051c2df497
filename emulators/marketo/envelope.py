"""Marketo's response envelope, its errors, and reading request parameters.

Marketo answers almost everything with HTTP 200 and ``{"requestId", "success", ...}``; a
rejected call carries ``success: false`` and ``errors: [{"code": "606", "message": ...}]``
with the code as a string (reference §0, §2.4).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.requests import Request

ERROR_MESSAGES = {
    "601": "Access token invalid",
    "602": "Access token expired",
    "604": "Request time-out",
    "605": "HTTP Method not supported",
    "606": "Max rate limit '%s' exceeded with in '%s' secs",
    "607": "Daily quota reached",
    "608": "API Temporarily Unavailable",
    "609": "Invalid JSON",
    "610": "Requested resource not found",
    "611": "System error",
    "612": "Invalid Content Type",
    "613": "Invalid Multipart Request",
    "614": "Invalid Subscription",
    "615": "Concurrent access limit reached",
    "701": "%s cannot be blank",
    "713": "Transient Error",
}


class MarketoError(Exception):
    """A response-level failure: the whole call is rejected with ``success: false``."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or ERROR_MESSAGES.get(code, "Error"))
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, "Error")


def request_id() -> str:
    """Return an id shaped like Marketo's (``"<hex>#<hex>"``)."""
    return f"{secrets.token_hex(2)}#{int(time.time() * 1000):x}"


def ok(result: list[Any] | None = None, **extra: Any) -> JSONResponse:
    """Return a success envelope; ``extra`` adds members such as ``nextPageToken``."""
    body: dict[str, Any] = {"requestId": request_id(), "success": True}
    if result is not None:
        body["result"] = result
    body.update(extra)
    return JSONResponse(body)


def failure(code: str, message: str | None = None) -> JSONResponse:
    """Return a ``success: false`` envelope (HTTP 200, as the real API does)."""
    err = MarketoError(code, message)
    return JSONResponse(
        {"requestId": request_id(), "success": False, "errors": [{"code": err.code, "message": err.message}]}
    )


def skipped(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """Return a per-record ``skipped`` result with its ``reasons``."""
    return {**extra, "status": "skipped", "reasons": [{"code": code, "message": message}]}


@dataclass
class Params:
    """Request parameters merged from the query string and the body.

    Marketo clients send the same parameters in the query, in an urlencoded body
    (``POST ...?_method=GET``) or in a JSON body; lists come comma-joined, repeated, or as
    JSON arrays. ``get_list`` hides those differences.
    """

    values: dict[str, list[Any]] = field(default_factory=dict)
    json_body: Any = None

    def add(self, key: str, value: Any) -> None:
        self.values.setdefault(key, []).append(value)

    def get(self, key: str, default: Any = None) -> Any:
        found = self.values.get(key)
        return found[-1] if found else default

    def get_list(self, key: str) -> list[Any]:
        out: list[Any] = []
        for value in self.values.get(key, []):
            if isinstance(value, list):
                out.extend(value)
            elif isinstance(value, str):
                out.extend(part.strip() for part in value.split(",") if part.strip())
            elif value is not None:
                out.append(value)
        return out

    def get_int(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise MarketoError("1003", f"Invalid value '{raw}' for parameter '{key}'") from None
        if not low <= value <= high:
            raise MarketoError("1003", f"Parameter '{key}' must be between {low} and {high}")
        return value


async def read_params(request: Request) -> Params:
    """Merge query and body parameters (urlencoded or JSON) of ``request``.

    Raises:
        MarketoError: 609 when a JSON body does not parse.
    """
    params = Params()
    for key, value in request.query_params.multi_items():
        params.add(key, value)
    body = await request.body()
    if not body:
        return params
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        for key, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
            params.add(key, value)
    elif ctype in ("application/json", "text/json", ""):
        try:
            parsed = json.loads(body)
        except ValueError:
            raise MarketoError("609") from None
        params.json_body = parsed
        if isinstance(parsed, dict):
            for key, value in parsed.items():
                params.add(key, value)
    else:
        raise MarketoError("612")
    return params


def encode_token(kind: str, position: int) -> str:
    """Return an opaque, base32-looking page token for ``position``."""
    return base64.b32encode(f"{kind}:{position}".encode()).decode()


def decode_token(token: str, kind: str) -> int:
    """Return the position in ``token``.

    Raises:
        MarketoError: 1003 when the token is malformed or of another kind.
    """
    try:
        padded = token + "=" * (-len(token) % 8)
        prefix, _, pos = base64.b32decode(padded).decode().partition(":")
        if prefix != kind:
            raise ValueError(prefix)
        return int(pos)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise MarketoError("1003", f"Invalid nextPageToken '{token}'") from None
