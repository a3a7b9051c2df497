"""Build and parse Dataverse ``$batch`` bodies (OData ``multipart/mixed``), change sets included.

Each operation becomes one ``application/http`` part; operations grouped into a change set are
wrapped in a nested ``multipart/mixed`` part and succeed or roll back together. The response
mirrors the request: one part per operation, or for a failed change set a single error part.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

CRLF = "\r\n"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_STATUS_LINE = re.compile(r"^HTTP/\d(?:\.\d)?\s+(\d{3})\s*(.*)$")


@dataclass(frozen=True)
class BatchOperation:
    """One request inside a ``$batch``.

    Attributes:
        method: ``PATCH``, ``DELETE``, ``POST``...
        url: Absolute path of the resource, e.g. ``/api/data/v9.2/leads(<guid>)``.
        body: JSON body, or None.
        headers: Extra headers of this operation (``Prefer``, ``If-Match``...).
    """

    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class BatchResponse:
    """One response part of a ``$batch`` answer."""

    status: int
    reason: str
    headers: dict[str, str]
    body: str
    content_id: str | None = None
    change_set: int | None = None

    def json(self) -> Any:
        """Return the body parsed as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body.strip() else None
        except ValueError:
            return None


def build_batch(groups: Sequence[Sequence[BatchOperation]], atomic: bool) -> tuple[str, str]:
    """Return ``(content_type, body)`` of a ``$batch`` request.

    Args:
        groups: Operations in groups; with ``atomic`` each group is one change set, otherwise
            every operation is an independent part.
        atomic: Wrap each group in a change set.
    """
    boundary = f"batch_{uuid.uuid4().hex}"
    lines: list[str] = []
    content_id = 0
    for group in groups:
        if atomic:
            change_set = f"changeset_{uuid.uuid4().hex}"
            lines += [f"--{boundary}", f'Content-Type: multipart/mixed; boundary="{change_set}"', ""]
            for op in group:
                content_id += 1
                lines += [f"--{change_set}", *_operation(op, content_id)]
            lines += [f"--{change_set}--", ""]
        else:
            for op in group:
                content_id += 1
                lines += [f"--{boundary}", *_operation(op, content_id)]
    lines += [f"--{boundary}--", ""]
    return f'multipart/mixed; boundary="{boundary}"', CRLF.join(lines)


def _operation(op: BatchOperation, content_id: int) -> list[str]:
    lines = [
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        f"Content-ID: {content_id}",
        "",
        f"{op.method.upper()} {op.url} HTTP/1.1",
    ]
    lines += [f"{name}: {value}" for name, value in op.headers.items()]
    if op.body is not None:
        lines += [
            "Content-Type: application/json; type=entry",
            "",
            json.dumps(op.body, separators=(",", ":")),
        ]
    else:
        lines += [""]
    return [*lines, ""]


def boundary_of(content_type: str) -> str:
    """Return the boundary parameter of a multipart content type.

    Raises:
        ValueError: The content type has no boundary.
    """
    match = _BOUNDARY.search(content_type)
    if not match:
        raise ValueError(f"no boundary in content type {content_type!r}")
    return match.group(1)


def parse_batch(content_type: str, body: str) -> list[BatchResponse]:
    """Parse a ``$batch`` response into its operation responses, in order.

    Responses inside a change set carry the change set's ordinal in ``change_set``.
    """
    responses: list[BatchResponse] = []
    change_set = 0
    for headers, payload in _split(body, boundary_of(content_type)):
        part_type = headers.get("content-type", "")
        if part_type.lower().startswith("multipart/mixed"):
            change_set += 1
            for inner_headers, inner in _split(payload, boundary_of(part_type)):
                responses.append(_http_response(inner, inner_headers.get("content-id"), change_set))
        else:
            responses.append(_http_response(payload, headers.get("content-id"), None))
    return responses


def _split(body: str, boundary: str) -> list[tuple[dict[str, str], str]]:
    """Split a multipart body into ``(headers, payload)`` parts (headers lower-cased)."""
    text = body.replace("\r\n", "\n")
    delimiter = f"--{boundary}"
    parts = []
    for chunk in text.split(delimiter)[1:]:
        if chunk.startswith("--"):
            break  # the closing delimiter
        chunk = chunk.removeprefix("\n").removesuffix("\n")
        head, _, payload = chunk.partition("\n\n")
        parts.append((_headers(head), payload))
    return parts


def _headers(block: str) -> dict[str, str]:
    headers = {}
    for line in block.split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _http_response(payload: str, content_id: str | None, change_set: int | None) -> BatchResponse:
    head, _, body = payload.partition("\n\n")
    status_line, _, header_block = head.partition("\n")
    match = _STATUS_LINE.match(status_line.strip())
    if not match:
        raise ValueError(f"not an HTTP response line in $batch answer: {status_line[:80]!r}")
    return BatchResponse(
        int(match.group(1)), match.group(2), _headers(header_block), body.strip(), content_id, change_set
    )
