"""Compiling ``$select``, ``$filter`` and ``$orderby`` for one table into SQL, and paging cookies.

Paging: without ``$orderby`` rows come in primary-key order and the skiptoken carries the last
key seen (keyset paging, constant cost per page even at a million rows). With ``$orderby`` the
skiptoken carries an offset. Either way the token is wrapped in the ``<cookie .../>`` form the
real service uses, so clients treat it as opaque.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from typing import Any

from emulators.dynamics.errors import BAD_PROPERTY, ODataError
from emulators.dynamics.odata import Literal, Node, normalize_datetime, parse_filter
from emulators.dynamics.records import unknown_query_property
from emulators.dynamics.schema import BOOLEAN, DATETIME, Attribute, Table
from emulators.dynamics.store import quote

MAX_PAGE = 5000


def resolve(table: Table, name: str) -> Attribute:
    """Return the attribute a query names (``_x_value`` for a lookup, else the logical name)."""
    wire = table.by_wire_name()
    attr = wire.get(name)
    if attr is None:
        raise unknown_query_property(table, name)
    return attr


def select_attrs(table: Table, select: str | None) -> list[Attribute]:
    """Return the attributes to send: those of ``$select`` plus the primary key, or all."""
    readable = list(table.attributes.values())
    if not select:
        return readable
    chosen = [table.attributes[table.primary_id]]
    for name in (s.strip() for s in select.split(",")):
        if not name:
            continue
        attr = resolve(table, name)
        if attr not in chosen:
            chosen.append(attr)
    return chosen


def _sql_literal(attr: Attribute, lit: Literal) -> Any:
    if attr.type == BOOLEAN and lit.kind == "bool":
        return int(lit.value)
    if attr.type == DATETIME and lit.kind in ("datetime", "str"):
        try:
            value = normalize_datetime(str(lit.value))
        except ValueError:
            raise ODataError(400, BAD_PROPERTY, f"Bad date-time {lit.value!r} for '{attr.name}'") from None
        return value[:10] if attr.date_only else value
    if lit.kind == "bool":
        return int(lit.value)
    return lit.value


def compile_filter(table: Table, text: str) -> tuple[str, list[Any]]:
    """Compile ``$filter`` to an SQL condition and its parameters.

    ``ne`` keeps nulls (``x ne false`` matches rows where x is null), as Dataverse does; that is
    what makes ``new_synctomkto ne false`` select unset and true rows (sync-semantics.md §4.5).
    """
    params: list[Any] = []

    def walk(node: Node) -> str:
        tag = node[0]
        if tag in ("and", "or"):
            return f"({walk(node[1])} {tag.upper()} {walk(node[2])})"
        if tag == "not":
            return f"(NOT {walk(node[1])})"
        attr = resolve(table, node[2].name)
        col = quote(attr.name)
        if tag == "func":
            needle = str(node[3].value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = {"contains": f"%{needle}%", "startswith": f"{needle}%", "endswith": f"%{needle}"}[
                node[1]
            ]
            params.append(pattern)
            return f"({col} LIKE ? ESCAPE '\\')"
        op, lit = node[1], node[3]
        if lit.kind == "null":
            if op not in ("eq", "ne"):
                raise ODataError(400, BAD_PROPERTY, f"Only eq and ne compare with null ('{attr.name}')")
            return f"({col} IS {'NOT ' if op == 'ne' else ''}NULL)"
        params.append(_sql_literal(attr, lit))
        if op == "ne":
            return f"({col} IS NULL OR {col} <> ?)"
        sql_op = {"eq": "=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}[op]
        return f"({col} {sql_op} ?)"

    return walk(parse_filter(text)), params


def compile_orderby(table: Table, text: str) -> list[tuple[str, bool]]:
    """Return [(column, descending)] for ``$orderby``; raises 400 for unknown columns."""
    order: list[tuple[str, bool]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        bits = part.split()
        if len(bits) > 2 or (len(bits) == 2 and bits[1].lower() not in ("asc", "desc")):
            raise ODataError(400, BAD_PROPERTY, f"Bad $orderby clause {part!r}")
        attr = resolve(table, bits[0])
        order.append((attr.name, len(bits) == 2 and bits[1].lower() == "desc"))
    return order


def page_size(prefer: dict[str, str]) -> int | None:
    """Return the ``odata.maxpagesize`` preference, capped at 5,000, or None."""
    raw = prefer.get("odata.maxpagesize")
    if raw is None:
        return None
    try:
        return max(1, min(MAX_PAGE, int(raw)))
    except ValueError:
        raise ODataError(400, "", f"Bad odata.maxpagesize preference {raw!r}") from None


def parse_prefer(values: list[str]) -> dict[str, str]:
    """Parse ``Prefer`` header values (comma-separated, possibly several headers)."""
    out: dict[str, str] = {}
    for value in values:
        for part in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", value):
            part = part.strip()
            if not part:
                continue
            key, _, val = part.partition("=")
            out[key.strip().lower()] = val.strip().strip('"')
    return out


def encode_cookie(state: dict[str, Any]) -> str:
    """Wrap paging state in the real service's cookie shape (clients treat it as opaque)."""
    blob = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()
    page = int(state.get("p", 2))
    return f'<cookie pagenumber="{page}" pagingcookie="{urllib.parse.quote(blob)}" istracking="False" />'


def decode_cookie(token: str) -> dict[str, Any]:
    """Return the state inside a skiptoken made by :func:`encode_cookie`.

    Raises:
        ODataError: 400 when the token was not made here.
    """
    match = re.search(r'pagingcookie="([^"]*)"', token)
    try:
        if not match:
            raise ValueError(token)
        data = json.loads(base64.urlsafe_b64decode(urllib.parse.unquote(match.group(1))))
        if not isinstance(data, dict):
            raise ValueError(token)
        return data
    except ValueError:
        raise ODataError(400, "0x80040203", "Invalid $skiptoken: use @odata.nextLink as given") from None
