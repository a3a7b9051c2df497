"""The Dataverse Web API's resources, independent of HTTP: one request in, one response out.

The FastAPI app and ``$batch`` both call :meth:`WebApi.dispatch`, so a request inside a batch
behaves exactly like the same request sent alone. Paths are relative to ``/api/data/v9.2/``.
"""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from emulators.dynamics import actions, activities, customize, marketing, metadata, security
from emulators.dynamics.errors import DUPLICATE, EXPIRED_VERSION, INVALID_ARGUMENT, ODataError, not_found
from emulators.dynamics.odata import parse_key, split_top_level
from emulators.dynamics.query import (
    MAX_PAGE,
    compile_filter,
    compile_orderby,
    decode_cookie,
    encode_cookie,
    page_size,
    parse_prefer,
    select_attrs,
)
from emulators.dynamics.records import (
    RowWriter,
    convert_value,
    full_name,
    unknown_property,
    utc_now,
)
from emulators.dynamics.schema import COMPUTED_FULLNAME, OWNER, Attribute, Table
from emulators.dynamics.store import new_guid, quote, raw_connection

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from emulators.common.admin import CallStats
    from emulators.dynamics.store import Store

API_PATH = "/api/data/v9.2"
_INSERT_SQL: dict[tuple[str, tuple[str, ...]], str] = {}
JSON_TYPE = "application/json; odata.metadata=minimal"
_SEGMENT = re.compile(r"^(?P<name>[^/(]+)(?:\((?P<key>[^)]*)\))?(?:/(?P<rest>.*))?$")
MEMBERSHIP = "teammembership_association"
# Functions bound to a system user (``systemusers(<id>)/<name>()``), answered from its role.
USER_PRIVILEGES = "Microsoft.Dynamics.CRM.RetrieveUserPrivileges"
ATTRIBUTE_PRIVILEGES = "Microsoft.Dynamics.CRM.RetrievePrincipalAttributePrivileges"


@dataclass
class ApiRequest:
    """One Web API request: ``path`` is relative to ``/api/data/v9.2/`` and percent-decoded."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    base: str

    @property
    def api_root(self) -> str:
        return self.base + API_PATH

    def prefer(self) -> dict[str, str]:
        return parse_prefer([self.headers.get("prefer", "")])

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise ODataError(400, "0x80040203", f"Invalid JSON in request body: {exc}") from None


@dataclass
class ApiResponse:
    """What goes back: status, headers and an already encoded body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> ApiResponse:
        return cls(
            status,
            {"Content-Type": JSON_TYPE, "OData-Version": "4.0", **(headers or {})},
            msgspec.json.encode(data),
        )

    @classmethod
    def error(cls, err: ODataError) -> ApiResponse:
        return cls.json(err.body(), err.status, err.headers)


Refs = dict[str, tuple[Table, str]]  # batch Content-ID -> (table, id)


class WebApi:
    """The Web API over a :class:`Store`.

    Args:
        store: The database.
        stats: Counters (records read and written go in ``stats.add_records``).
        delta_expiry_s: Real seconds after which an unused delta token expires.
    """

    def __init__(self, store: Store, stats: CallStats, delta_expiry_s: float) -> None:
        self.store = store
        self.stats = stats
        self.delta_expiry_s = delta_expiry_s
        # Test switch (``POST /_emulator/visibility``): rows the application user no longer sees,
        # as after its security role was narrowed to a business unit. Per table, the number of
        # leading hex digits (of 16) whose GUIDs stay visible; hidden rows are left out of
        # queries, counts and change tracking and answer 404 by id, like rows of another unit.
        self.visible_digits: dict[str, int] = {}
        self._role: tuple[str, security.Role] = ("", security.Role())

    def set_visibility(self, table: str, fraction: float) -> float:
        """Let the application user see about ``fraction`` of ``table``'s rows; returns the share."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"visible_fraction must be in [0, 1], got {fraction}")
        digits = round(fraction * 16)
        if digits >= 16:
            self.visible_digits.pop(table, None)
        else:
            self.visible_digits[table] = digits
        return digits / 16

    def _visible(self, table: Table) -> str:
        """SQL condition of the rows the application user sees ('' when it sees them all)."""
        digits = self.visible_digits.get(table.logical_name)
        if digits is None:
            return ""
        if digits == 0:
            return "0 = 1"
        return f"substr(lower({quote(table.primary_id)}), 1, 1) < '{'0123456789abcdef'[digits]}'"

    # -- the application user's role ---------------------------------------------------------

    def role(self) -> security.Role:
        """The application user's role (``POST /_emulator/role``), re-read when it changed."""
        raw = self.store.meta.get(security.ROLE_META_KEY, "")
        if self._role[0] != raw:
            self._role = (raw, security.Role.from_json(raw))
        return self._role[1]

    def require(self, table: Table, privilege: str) -> None:
        """Refuse (403) what the application user's role has no privilege for."""
        security.require(self.role(), table, privilege, self.store.meta["app_user_id"])

    def writer(
        self, table: Table, attrs: list[Attribute], annotations: set[str], sql_json: bool = False
    ) -> RowWriter:
        """A :class:`RowWriter` that reads secured columns the user may not read as null."""
        return RowWriter(table, attrs, annotations, sql_json, self.role().unreadable(table.logical_name))

    # -- entry points -----------------------------------------------------------------------

    def handle(self, req: ApiRequest) -> ApiResponse:
        """Run one request in its own transaction; an error rolls it back."""
        try:
            with self.store.write_lock, self.store.engine.begin() as conn:
                return self.dispatch(conn, req, {})
        except ODataError as err:
            return ApiResponse.error(err)

    def dispatch(self, conn: Connection, req: ApiRequest, refs: Refs) -> ApiResponse:
        """Route ``req`` to its resource (call inside a transaction; raises ODataError)."""
        path = req.path.strip("/")
        if path.startswith("$") and path[1:].isdigit() and path in refs:  # batch reference: PATCH $1
            table, rid = refs[path]
            path = f"{table.entity_set}({rid})"
        if path == "":
            return self.service_document(req)
        if path == "$metadata":
            return ApiResponse(
                200,
                {"Content-Type": "application/xml", "OData-Version": "4.0"},
                metadata.csdl(self.store.tables).encode(),
            )
        if path in ("WhoAmI", "WhoAmI()"):
            return self.who_am_i(req)
        if path == "Merge" and req.method == "POST":
            actions.merge(self, conn, req)
            return ApiResponse(204, {"OData-Version": "4.0"})
        unbound = marketing.unbound(self, conn, req, path)
        if unbound is not None:
            return unbound
        match = _SEGMENT.match(path)
        if not match:
            raise ODataError(404, "0x8006088a", f"Resource not found for the segment '{path}'.")
        name, key, rest = match.group("name"), match.group("key"), match.group("rest")
        if name == "EntityDefinitions":
            return self.entity_definitions(conn, req, key, rest)
        found = self.store.by_set(name)
        if found is None:
            raise ODataError(404, "0x8006088a", f"Resource not found for the segment '{name}'.")
        table = found
        special = marketing.route(self, conn, req, table, key, rest, refs)
        if special is not None:
            return special
        if key is None:
            return self.collection(conn, req, table, rest, refs)
        return self.entity(conn, req, table, key, rest, refs)

    def entity_definitions(
        self, conn: Connection, req: ApiRequest, key: str | None, rest: str | None
    ) -> ApiResponse:
        """Table definitions: read them (GET), or customize them (see :mod:`customize`)."""
        if req.method == "GET":
            role = self.role()
            secured = {name: role.secured_columns(name) for name in self.store.tables}
            return metadata.entity_definitions(self.store.tables, req, key, rest, secured)
        location = customize.write(self.store.tables, conn, req, key, rest)
        headers = {"OData-Version": "4.0"}
        if location:
            headers["OData-EntityId"] = location
        return ApiResponse(204, headers)

    # -- documents --------------------------------------------------------------------------

    def service_document(self, req: ApiRequest) -> ApiResponse:
        sets = [
            {"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set}
            for t in self.store.tables.values()
        ]
        sets.append({"name": "EntityDefinitions", "kind": "EntitySet", "url": "EntityDefinitions"})
        return ApiResponse.json({"@odata.context": f"{req.api_root}/$metadata", "value": sets})

    def who_am_i(self, req: ApiRequest) -> ApiResponse:
        meta = self.store.meta
        return ApiResponse.json(
            {
                "@odata.context": f"{req.api_root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": meta["businessunit_id"],
                "UserId": meta["app_user_id"],
                "OrganizationId": meta["organization_id"],
            }
        )

    # -- collections ------------------------------------------------------------------------

    def collection(
        self, conn: Connection, req: ApiRequest, table: Table, rest: str | None, refs: Refs
    ) -> ApiResponse:
        if rest is None and req.method == "GET":
            return self.list_records(conn, req, table)
        if rest is None and req.method == "POST":
            return self.create(conn, req, table, refs)
        if rest == "$count" and req.method == "GET":
            self.require(table, "Read")
            where, params = self._where(table, req.query.get("$filter"))
            n = conn.exec_driver_sql(
                f"SELECT COUNT(*) FROM {quote(table.logical_name)}{where}", tuple(params)
            ).scalar()
            return ApiResponse(
                200,
                {"Content-Type": "text/plain", "OData-Version": "4.0"},
                str(min(int(n or 0), MAX_PAGE)).encode(),
            )
        if (
            rest in ("Microsoft.Dynamics.CRM.CreateMultiple", "Microsoft.Dynamics.CRM.UpsertMultiple")
            and req.method == "POST"
        ):
            return self.create_multiple(conn, req, table, upsert=rest.endswith("UpsertMultiple"))
        raise ODataError(
            405 if rest is None else 404, "", f"{req.method} {table.entity_set}/{rest or ''} is not supported"
        )

    def _where(self, table: Table, filter_text: str | None) -> tuple[str, list[Any]]:
        visible = self._visible(table)
        if not filter_text:
            return (f" WHERE {visible}" if visible else ""), []
        cond, params = compile_filter(table, filter_text)
        return f" WHERE ({cond})" + (f" AND {visible}" if visible else ""), params

    def list_records(self, conn: Connection, req: ApiRequest, table: Table) -> ApiResponse:
        q = req.query
        prefer = req.prefer()
        delta = q.get("$deltatoken")
        tracking = "odata.track-changes" in prefer or delta is not None
        self.require(table, "Read")
        if tracking and not table.change_tracking:
            # Dataverse refuses it; the status and code are unconfirmed (the reference: often a
            # 400 saying change tracking is not enabled). The generic InvalidArgument code is used.
            raise ODataError(
                400,
                INVALID_ARGUMENT,
                f"Change tracking is not enabled for table '{table.logical_name}': turn it on"
                " (ChangeTrackingEnabled) before asking for odata.track-changes or a delta link.",
            )
        if tracking:
            for option in ("$filter", "$orderby", "$expand", "$top"):
                if option in q:
                    raise ODataError(
                        400,
                        "0x80060888",
                        f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.',
                    )
        writer = self.writer(
            table, select_attrs(table, q.get("$select")), _annotations(prefer), "$expand" not in q
        )
        size = page_size(prefer)
        state = decode_cookie(q["$skiptoken"]) if "$skiptoken" in q else {}
        applied = [f"odata.maxpagesize={size}"] if size else []
        if tracking:
            applied.append("odata.track-changes")
        if delta is not None:
            body = self._delta_page(conn, req, table, writer, delta, size or MAX_PAGE, state)
        else:
            body = self._query_page(conn, req, table, writer, size, state, tracking)
        self._expand(conn, req, table, body["value"])
        headers = {"Preference-Applied": ",".join(applied)} if applied else {}
        return ApiResponse.json(body, headers=headers)

    def _query_page(
        self,
        conn: Connection,
        req: ApiRequest,
        table: Table,
        writer: RowWriter,
        size: int | None,
        state: dict[str, Any],
        tracking: bool,
    ) -> dict[str, Any]:
        q = req.query
        where, params = self._where(table, q.get("$filter"))
        order = compile_orderby(table, q["$orderby"]) if q.get("$orderby") else []
        pk = quote(table.primary_id)
        limit = size or MAX_PAGE
        last_page_cap = None
        if "$top" in q and size is None:  # $top is ignored when odata.maxpagesize is sent (§3.1)
            try:
                last_page_cap = max(0, int(q["$top"]))
            except ValueError:
                raise ODataError(400, "0x80060888", f"Bad $top value {q['$top']!r}") from None
            limit = min(limit, last_page_cap)
        conds = [where[7:]] if where else []
        offset = 0
        if order:
            offset = int(state.get("o", 0))
            order_sql = ", ".join(f"{quote(c)} {'DESC' if d else 'ASC'}" for c, d in order) + f", {pk} ASC"
        else:
            # Storage order (rowid): a sequential scan, the fastest keyset for big initial loads.
            # Dataverse's own default order is not documented as anything a client may rely on.
            if "k" in state:
                conds.append("rowid > ?")
                params.append(state["k"])
            order_sql = "rowid ASC"
        selected = writer.json_sql or ", ".join(map(quote, writer.columns))
        sql = (
            f"SELECT {selected}, rowid FROM {quote(table.logical_name)}"
            + (f" WHERE {' AND '.join(conds)}" if conds else "")
            + f" ORDER BY {order_sql} LIMIT {limit + 1} OFFSET {offset}"
        )
        snapshot = int(state.get("s", self.store.current_version))
        rows = raw_connection(conn).execute(sql, tuple(params)).fetchall()
        more = len(rows) > limit and last_page_cap is None
        rows = rows[:limit]
        self.stats.add_records(f"{table.logical_name}.read", len(rows))
        body: dict[str, Any] = {
            "@odata.context": _context(req, table, q.get("$select")),
            "value": _records(writer, rows),
        }
        if q.get("$count", "").lower() == "true":
            n = conn.exec_driver_sql(
                f"SELECT COUNT(*) FROM {quote(table.logical_name)}{where}",
                tuple(self._where(table, q.get("$filter"))[1]),
            ).scalar()
            body["@odata.count"] = min(int(n or 0), MAX_PAGE)
        if more:
            nxt = {"p": int(state.get("p", 1)) + 1, "s": snapshot}
            if order:
                nxt["o"] = offset + limit
            else:
                nxt["k"] = rows[-1][-1]
            body["@odata.nextLink"] = _link(req, {"$skiptoken": encode_cookie(nxt)})
        elif tracking:
            body["@odata.deltaLink"] = self._delta_link(conn, req, table, snapshot)
        return body

    # -- change tracking --------------------------------------------------------------------

    def _delta_link(self, conn: Connection, req: ApiRequest, table: Table, version: int) -> str:
        token = f"{version}!{time.strftime('%m/%d/%Y %H:%M:%S', time.gmtime())}"
        conn.exec_driver_sql(
            "INSERT OR REPLACE INTO delta_tokens (token, entity, version, last_used, expired)"
            " VALUES (?, ?, ?, ?, 0)",
            (token, table.logical_name, version, time.time()),
        )
        keep = {k: v for k, v in req.query.items() if k == "$select"}
        keep["$deltatoken"] = token
        return f"{req.api_root}/{table.entity_set}?{_encode_query(keep)}"

    def _check_delta_token(self, conn: Connection, table: Table, token: str) -> int:
        row = conn.exec_driver_sql(
            "SELECT entity, version, last_used, expired FROM delta_tokens WHERE token = ? AND entity = ?",
            (token, table.logical_name),
        ).fetchone()
        now = time.time()
        # The exact code for an expired *data* delta token is unconfirmed (reference §4); the
        # documented ExpiredVersionStamp of metadata tracking is used, with HTTP 400.
        if row is None or row[0] != table.logical_name or row[3] or now - row[2] > self.delta_expiry_s:
            raise ODataError(
                400,
                EXPIRED_VERSION,
                "Version stamp associated with the client has expired. Please perform a full sync.",
            )
        conn.exec_driver_sql(
            "UPDATE delta_tokens SET last_used = ? WHERE token = ? AND entity = ?",
            (now, token, table.logical_name),
        )
        return int(row[1])

    def _delta_page(
        self,
        conn: Connection,
        req: ApiRequest,
        table: Table,
        writer: RowWriter,
        token: str,
        size: int,
        state: dict[str, Any],
    ) -> dict[str, Any]:
        """Changed rows since the token (newest values), then tombstones, paged by version."""
        since = int(state["v"]) if "v" in state else self._check_delta_token(conn, table, token)
        upto = int(state.get("s", self.store.current_version))
        phase, after = state.get("ph", "u"), int(state.get("k", since))
        out: list[dict[str, Any]] = []
        last = after
        if phase == "u":
            vcol = writer.columns.index("versionnumber")
            visible = self._visible(table)
            rows = conn.exec_driver_sql(
                f"SELECT {', '.join(map(quote, writer.columns))} FROM {quote(table.logical_name)}"
                f" WHERE versionnumber > ? AND versionnumber <= ?{' AND ' + visible if visible else ''}"
                f" ORDER BY versionnumber LIMIT {size + 1}",
                (after, upto),
            ).fetchall()
            if len(rows) > size:
                rows = rows[:size]
                last = rows[-1][vcol]
            else:
                phase, last = "d", since
            out = [writer.record(r) for r in rows]
            self.stats.add_records(f"{table.logical_name}.read", len(out))
        more = False
        if phase == "d" and len(out) >= size:
            more = True  # a full page of upserts: tombstones (if any) come on the next page
        elif phase == "d":
            room = size - len(out)
            dead = conn.exec_driver_sql(
                "SELECT id, versionnumber FROM deleted_records WHERE entity = ? AND versionnumber > ?"
                f" AND versionnumber <= ? ORDER BY versionnumber LIMIT {room + 1}",
                (table.logical_name, last, upto),
            ).fetchall()
            more = len(dead) > room
            dead = dead[:room]
            ctx = f"{req.api_root}/$metadata#{table.entity_set}/$deletedEntity"
            out.extend({"@odata.context": ctx, "id": d[0], "reason": "deleted"} for d in dead)
            if dead:
                last = dead[-1][1]
        elif phase == "u":
            more = True
        body: dict[str, Any] = {
            "@odata.context": _context(req, table, req.query.get("$select")) + "/$delta",
            "value": out,
        }
        if more:
            nxt = {"v": since, "s": upto, "ph": phase, "k": last, "p": int(state.get("p", 1)) + 1}
            body["@odata.nextLink"] = _link(req, {"$skiptoken": encode_cookie(nxt)})
        else:
            body["@odata.deltaLink"] = self._delta_link(conn, req, table, upto)
        return body

    # -- single records ---------------------------------------------------------------------

    def entity(
        self, conn: Connection, req: ApiRequest, table: Table, key: str, rest: str | None, refs: Refs
    ) -> ApiResponse:
        parsed = parse_key(key)
        if rest is None:
            if req.method == "GET":
                return self.get_one(conn, req, table, parsed)
            if req.method == "PATCH":
                return self.upsert(conn, req, table, parsed, refs)
            if req.method == "DELETE":
                return self.delete(conn, req, table, parsed)
            raise ODataError(405, "", f"{req.method} is not allowed on a {table.logical_name} record")
        rid = self.find_id(conn, table, parsed)
        if rid is None:
            raise not_found(table.logical_name, _key_text(parsed))
        if table.logical_name == "systemuser" and rest.removesuffix("()") in (
            USER_PRIVILEGES,
            ATTRIBUTE_PRIVILEGES,
        ):
            return self.user_function(req, rid, rest.removesuffix("()"))
        if rest == actions.QUALIFY_LEAD and table.logical_name == "lead" and req.method == "POST":
            return ApiResponse.json(actions.qualify_lead(self, conn, req, table, rid))
        if rest.startswith(MEMBERSHIP) and table.logical_name in ("team", "systemuser"):
            return self.membership(conn, req, table, rid, rest)
        if (
            rest in ("Microsoft.Dynamics.CRM.AddMembersTeam", "Microsoft.Dynamics.CRM.RemoveMembersTeam")
            and table.logical_name == "team"
            and req.method == "POST"
        ):
            members = req.json().get("Members") or []
            ids = [str(m.get("systemuserid", "")).lower() for m in members]
            self._change_members(conn, rid, ids, add=rest.endswith("AddMembersTeam"))
            return ApiResponse(204, {"OData-Version": "4.0"})
        attr = table.attributes.get(rest)
        if attr is not None and not attr.is_lookup and req.method in ("GET", "DELETE"):
            if req.method == "DELETE":  # DELETE /contacts(id)/telephone1 clears one column
                self.require(table, "Write")
                security.check_columns(self.role(), table, [attr.name], creating=False)
                self._write(conn, table, rid, {attr.name: None})
                return ApiResponse(204, {"OData-Version": "4.0"})
            self.require(table, "Read")
            value = conn.exec_driver_sql(
                f"SELECT {quote(attr.name)} FROM {quote(table.logical_name)}"
                f" WHERE {quote(table.primary_id)} = ?",
                (rid,),
            ).scalar()
            if attr.name in self.role().unreadable(table.logical_name):
                value = None
            return ApiResponse.json(
                {
                    "@odata.context": f"{req.api_root}/$metadata#{table.entity_set}({rid})/{attr.name}",
                    "value": value,
                }
            )
        raise ODataError(404, "0x8006088a", f"Resource not found for the segment '{rest}'.")

    def user_function(self, req: ApiRequest, user_id: str, name: str) -> ApiResponse:
        """``RetrieveUserPrivileges`` or ``RetrievePrincipalAttributePrivileges`` of a system user.

        Only the application user has a role of its own; any other user is answered with the
        default role (the emulator models no one else's rights).
        """
        if req.method != "GET":
            raise ODataError(405, "", f"{name} is a function: call it with GET")
        role = self.role() if user_id == self.store.meta["app_user_id"] else security.Role()
        if name == USER_PRIVILEGES:
            body = security.user_privileges(
                self.store.tables.values(), role, self.store.meta["businessunit_id"], req.api_root
            )
        else:
            body = security.attribute_privileges(role, req.api_root)
        return ApiResponse.json(body)

    def find_id(self, conn: Connection, table: Table, key: str | dict[str, str]) -> str | None:
        """Return the primary key a key segment designates, or None when no row matches."""
        t, pk = quote(table.logical_name), quote(table.primary_id)
        condition = self._visible(table)
        visible = f" AND {condition}" if condition else ""
        if isinstance(key, str):
            got = _scalar(conn, f"SELECT {pk} FROM {t} WHERE {pk} = ?{visible}", (key,))
            return str(got) if got else None
        cols = tuple(sorted(k.lower() for k in key))
        if cols == (table.primary_id,):
            return self.find_id(conn, table, str(next(iter(key.values()))).lower())
        if cols not in {tuple(sorted(k)) for k in table.alternate_keys}:
            raise ODataError(
                400,
                "0x80060888",
                f"The key attribute(s) {', '.join(cols)} of '{table.logical_name}'"
                " are not a defined alternate key. Defined keys: "
                + "; ".join(",".join(k) for k in table.alternate_keys),
            )
        values = {k.lower(): v for k, v in key.items()}
        where = " AND ".join(f"{quote(c)} = ?" for c in cols)
        got = _scalar(conn, f"SELECT {pk} FROM {t} WHERE {where}{visible}", tuple(values[c] for c in cols))
        return str(got) if got else None

    def get_one(
        self, conn: Connection, req: ApiRequest, table: Table, key: str | dict[str, str]
    ) -> ApiResponse:
        self.require(table, "Read")
        writer = self.writer(table, select_attrs(table, req.query.get("$select")), _annotations(req.prefer()))
        rid = self.find_id(conn, table, key)
        row = None
        if rid is not None:
            row = conn.exec_driver_sql(
                f"SELECT {', '.join(map(quote, writer.columns))} FROM"
                f" {quote(table.logical_name)} WHERE {quote(table.primary_id)} = ?",
                (rid,),
            ).fetchone()
        if row is None:
            raise not_found(table.logical_name, _key_text(key))
        record = writer.record(row)
        if req.headers.get("if-none-match") == record["@odata.etag"]:
            return ApiResponse(304, {"OData-Version": "4.0"})
        self.stats.add_records(f"{table.logical_name}.read", 1)
        self._expand(conn, req, table, [record])
        body = {"@odata.context": _context(req, table, req.query.get("$select")) + "/$entity", **record}
        return ApiResponse.json(body, headers={"ETag": record["@odata.etag"]})

    # -- writes -----------------------------------------------------------------------------

    def _values(self, conn: Connection, table: Table, body: Any, record: str, refs: Refs) -> dict[str, Any]:
        """Convert a JSON body into stored column values (binds resolved, types checked)."""
        if not isinstance(body, dict):
            raise ODataError(
                400, "0x80040203", f"{table.logical_name} record {record}: body must be a JSON object"
            )
        wire = table.by_wire_name()
        nav = table.navigation()
        values: dict[str, Any] = {}
        for name, value in body.items():
            if name.endswith("@odata.bind"):
                prop = name[: -len("@odata.bind")]
                if prop not in nav:
                    raise ODataError(
                        400,
                        "0x80060888",
                        f"An undeclared property '{prop}' which only has property"
                        " annotations in the payload but no property value was found in the payload."
                        f" ({table.logical_name} record {record})",
                    )
                attr, target = nav[prop]
                if value is None:
                    values[attr.name] = None
                    if attr.polymorphic:
                        values[f"{attr.name}type"] = None
                    continue
                allowed = attr.targets if attr.type == OWNER else (target,)
                where = f"{table.logical_name} record {record}, '{prop}'"
                ref_table, ref_id = self.resolve_ref(conn, str(value), refs, allowed, where)
                if ref_table.logical_name not in allowed:  # a $n reference to another table
                    raise ODataError(
                        400,
                        "0x80060888",
                        f"{table.logical_name} record {record}, '{prop}': cannot"
                        f" bind a {ref_table.logical_name}; expected {' or '.join(allowed)}",
                    )
                self.require(table, "Append")
                self.require(ref_table, "AppendTo")
                values[attr.name] = ref_id
                if attr.polymorphic:
                    values[f"{attr.name}type"] = ref_table.logical_name
                continue
            if name.startswith("@") or "@" in name:
                continue  # annotations such as @odata.type or @odata.etag carry no column value
            column = wire.get(name)
            if column is None:
                raise unknown_property(table, name)
            attr = column
            if attr.is_lookup:
                raise ODataError(
                    400,
                    "0x80060888",
                    f"{table.logical_name} record {record}: set lookup '{attr.name}'"
                    f" with '{attr.name}@odata.bind', not '{name}'",
                )
            if attr.read_only:
                continue  # Dataverse ignores values sent for system-maintained columns
            values[attr.name] = convert_value(table, attr, value, record)
        return values

    def _checked_values(
        self, conn: Connection, table: Table, body: Any, record: str, refs: Refs, *, creating: bool
    ) -> dict[str, Any]:
        """:meth:`_values` of a create or an update the role allows (table and secured columns).

        Raises:
            ODataError: 403 naming the missing privilege or the secured column.
        """
        self.require(table, "Create" if creating else "Write")
        values = self._values(conn, table, body, record, refs)
        security.check_columns(self.role(), table, values, creating)
        return values

    def resolve_ref(
        self, conn: Connection, ref: str, refs: Refs, expect: tuple[str, ...] = (), where: str = ""
    ) -> tuple[Table, str]:
        """Return (table, id) of a bind value: ``/accounts(guid)``, a full URL, an alternate key or ``$n``.

        ``expect`` lists the tables the lookup may point to; another table is a 400 (checked
        before the record's existence, as the type is known from the URL alone).
        """
        if ref.startswith("$"):
            if ref not in refs:
                raise ODataError(
                    400, "0x80060888", f"Content-ID reference {ref} is not defined in this change set"
                )
            return refs[ref]
        path = ref.split(API_PATH, 1)[1] if API_PATH in ref else ref
        match = _SEGMENT.match(path.strip("/"))
        table = self.store.by_set(match.group("name")) if match else None
        if match is None or table is None or match.group("key") is None or match.group("rest"):
            raise ODataError(
                400, "0x80060888", f"Bad @odata.bind value {ref!r}: expected /<entityset>(<key>)"
            )
        if expect and table.logical_name not in expect:
            raise ODataError(
                400,
                "0x80060888",
                f"{where}: cannot bind a {table.logical_name}; expected {' or '.join(expect)}",
            )
        key = parse_key(match.group("key"))
        rid = self.find_id(conn, table, key)
        if rid is None:
            raise not_found(table.logical_name, _key_text(key))
        return table, rid

    def _system_values(self, table: Table, values: dict[str, Any], creating: bool) -> None:
        now = utc_now()
        user = self.store.meta["app_user_id"]
        values["modifiedon"] = now
        values["modifiedby"] = user
        values["versionnumber"] = self.store.next_version()
        if creating:
            values["createdon"] = now
            values["createdby"] = user
            if "ownerid" in table.attributes and not values.get("ownerid"):
                values["ownerid"], values["owneridtype"] = user, "systemuser"
            for col in ("statecode", "statuscode"):
                attr = table.attributes.get(col)
                if attr is not None and values.get(col) is None:
                    # the first status reason of the default (first) state: 1 for most tables,
                    # 0 where the choices start at 0 (campaign "Proposed", list "Active")
                    values[col] = attr.options[0][0] if attr.options else (0 if col == "statecode" else 1)
            for col, default in table.create_defaults().items():  # a Boolean's DefaultValue
                values.setdefault(col, default)

    def _insert(self, conn: Connection, table: Table, values: dict[str, Any]) -> None:
        if table.logical_name in COMPUTED_FULLNAME and "fullname" in table.attributes:
            values["fullname"] = full_name(values.get("firstname"), values.get("lastname"))
        cols = tuple(values)
        sql = _INSERT_SQL.get((table.logical_name, cols))
        if sql is None:
            sql = (
                f"INSERT INTO {quote(table.logical_name)} ({', '.join(map(quote, cols))})"
                f" VALUES ({', '.join('?' for _ in cols)})"
            )
            _INSERT_SQL[(table.logical_name, cols)] = sql
        try:
            # The DB-API cursor of the same connection (same transaction and savepoints): the
            # per-statement overhead of SQLAlchemy would dominate $batch write throughput.
            raw_connection(conn).execute(sql, tuple(values.values()))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise ODataError(
                    412,
                    DUPLICATE,
                    "A record with matching key values already exists."
                    f" ({table.logical_name} {values.get(table.primary_id)})",
                ) from None
            raise
        self.stats.add_records(f"{table.logical_name}.write", 1)
        if table.is_activity:
            activities.mirror_created(self, conn, table, values)

    def _write(self, conn: Connection, table: Table, rid: str, values: dict[str, Any]) -> None:
        self._system_values(table, values, creating=False)
        if table.logical_name in COMPUTED_FULLNAME and ({"firstname", "lastname"} & values.keys()):
            first, last = conn.exec_driver_sql(  # type: ignore[misc]
                f"SELECT firstname, lastname FROM {quote(table.logical_name)}"
                f" WHERE {quote(table.primary_id)} = ?",
                (rid,),
            ).fetchone()
            values["fullname"] = full_name(values.get("firstname", first), values.get("lastname", last))
        sets = ", ".join(f"{quote(c)} = ?" for c in values)
        try:
            raw_connection(conn).execute(
                f"UPDATE {quote(table.logical_name)} SET {sets} WHERE {quote(table.primary_id)} = ?",
                (*values.values(), rid),
            )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise ODataError(
                    412,
                    DUPLICATE,
                    f"A record with matching key values already exists. ({table.logical_name} {rid})",
                ) from None
            raise
        self.stats.add_records(f"{table.logical_name}.write", 1)
        if table.is_activity:
            activities.mirror_updated(self, conn, table, rid, values)

    def create(self, conn: Connection, req: ApiRequest, table: Table, refs: Refs) -> ApiResponse:
        body = req.json()
        values = self._checked_values(conn, table, body, "(new)", refs, creating=True)
        rid = str(body.get(table.primary_id) or new_guid()).lower() if isinstance(body, dict) else new_guid()
        values[table.primary_id] = rid
        self._system_values(table, values, creating=True)
        self._insert(conn, table, values)
        return self._written(conn, req, table, rid, created=True)

    def create_multiple(self, conn: Connection, req: ApiRequest, table: Table, upsert: bool) -> ApiResponse:
        targets = req.json().get("Targets")
        if not isinstance(targets, list):
            raise ODataError(400, "0x80040203", "CreateMultiple/UpsertMultiple need a 'Targets' array")
        ids: list[str] = []
        for i, target in enumerate(targets):
            body = {k: v for k, v in target.items() if k not in ("@odata.type", "@odata.id")}
            rid = str(body.get(table.primary_id) or "").lower() or None
            if upsert and rid is None and "@odata.id" in target:
                match = _SEGMENT.match(str(target["@odata.id"]).split(API_PATH, 1)[-1].strip("/"))
                if match and match.group("key"):
                    rid = self.find_id(conn, table, parse_key(match.group("key")))
            existing = rid and self.find_id(conn, table, rid)
            if upsert and existing:
                values = self._checked_values(conn, table, body, f"#{i}", {}, creating=False)
                self._write(conn, table, existing, values)
                ids.append(existing)
                continue
            values = self._checked_values(conn, table, body, f"#{i}", {}, creating=True)
            values[table.primary_id] = rid or new_guid()
            self._system_values(table, values, creating=True)
            self._insert(conn, table, values)
            ids.append(values[table.primary_id])
        return ApiResponse.json(
            {
                "@odata.context": f"{req.api_root}/$metadata#Microsoft.Dynamics.CRM."
                f"{'Upsert' if upsert else 'Create'}MultipleResponse",
                "Ids": ids,
            }
        )

    def upsert(
        self, conn: Connection, req: ApiRequest, table: Table, key: str | dict[str, str], refs: Refs
    ) -> ApiResponse:
        """PATCH: update, or create when missing, honouring If-Match / If-None-Match (§5)."""
        if_match = req.headers.get("if-match")
        if_none = req.headers.get("if-none-match")
        rid = self.find_id(conn, table, key)
        label = _key_text(key)
        if rid is not None:
            if if_none == "*":
                raise ODataError(412, "", "A record with matching key values already exists.")
            if if_match and if_match != "*":
                version = conn.exec_driver_sql(
                    f"SELECT versionnumber FROM {quote(table.logical_name)}"
                    f" WHERE {quote(table.primary_id)} = ?",
                    (rid,),
                ).scalar()
                if if_match != f'W/"{version}"':
                    raise ODataError(
                        412,
                        "",
                        "The version of the existing record doesn't match the RowVersion property provided.",
                    )
            values = self._checked_values(conn, table, req.json(), label, refs, creating=False)
            self._write(conn, table, rid, values)
            return self._written(conn, req, table, rid, created=False)
        if if_match:
            raise not_found(table.logical_name, label)
        values = self._checked_values(conn, table, req.json(), label, refs, creating=True)
        if isinstance(key, str):
            rid = key
        else:
            rid = new_guid()
            for col, val in key.items():
                attr = table.attributes[col.lower()]
                values[attr.name] = convert_value(table, attr, val, label)
        values[table.primary_id] = rid
        self._system_values(table, values, creating=True)
        self._insert(conn, table, values)
        return self._written(conn, req, table, rid, created=True)

    def _written(
        self, conn: Connection, req: ApiRequest, table: Table, rid: str, created: bool
    ) -> ApiResponse:
        url = f"{req.api_root}/{table.entity_set}({rid})"
        headers = {"OData-EntityId": url, "OData-Version": "4.0"}
        if req.prefer().get("return") == "representation":
            writer = self.writer(table, select_attrs(table, req.query.get("$select")), set())
            row = (
                raw_connection(conn)
                .execute(
                    f"SELECT {', '.join(map(quote, writer.columns))} FROM"
                    f" {quote(table.logical_name)} WHERE {quote(table.primary_id)} = ?",
                    (rid,),
                )
                .fetchone()
            )
            body = {
                "@odata.context": _context(req, table, req.query.get("$select")) + "/$entity",
                **writer.record(row),
            }
            headers["Preference-Applied"] = "return=representation"
            return ApiResponse.json(body, 201 if created else 200, headers)
        return ApiResponse(204, headers)

    def delete(
        self, conn: Connection, req: ApiRequest, table: Table, key: str | dict[str, str]
    ) -> ApiResponse:
        self.require(table, "Delete")
        rid = self.find_id(conn, table, key)
        if rid is None:
            raise not_found(table.logical_name, _key_text(key))
        if_match = req.headers.get("if-match")
        t, pk = quote(table.logical_name), quote(table.primary_id)
        if if_match and if_match != "*":
            version = conn.exec_driver_sql(f"SELECT versionnumber FROM {t} WHERE {pk} = ?", (rid,)).scalar()
            if if_match != f'W/"{version}"':
                raise ODataError(
                    412,
                    "",
                    "The version of the existing record doesn't match the RowVersion property provided.",
                )
        # Related records keep their lookups here; a real org cascades per relationship settings.
        conn.exec_driver_sql(f"DELETE FROM {t} WHERE {pk} = ?", (rid,))
        conn.exec_driver_sql(
            "INSERT INTO deleted_records (entity, id, versionnumber) VALUES (?, ?, ?)",
            (table.logical_name, rid, self.store.next_version()),
        )
        if table.logical_name in ("team", "systemuser"):
            conn.exec_driver_sql(f"DELETE FROM teammembership WHERE {table.primary_id} = ?", (rid,))
        marketing.after_delete(self, conn, table, rid)
        self.stats.add_records(f"{table.logical_name}.delete", 1)
        return ApiResponse(204, {"OData-Version": "4.0"})

    # -- team membership --------------------------------------------------------------------

    def membership(self, conn: Connection, req: ApiRequest, table: Table, rid: str, rest: str) -> ApiResponse:
        """``teammembership_association`` from either side: list, associate, disassociate."""
        other = self.store.tables["systemuser" if table.logical_name == "team" else "team"]
        mine, theirs = table.primary_id, other.primary_id
        tail = rest[len(MEMBERSHIP) :]
        if tail == "" and req.method == "GET":
            writer = self.writer(
                other, select_attrs(other, req.query.get("$select")), _annotations(req.prefer())
            )
            rows = conn.exec_driver_sql(
                f"SELECT {', '.join('o.' + quote(c) for c in writer.columns)}"
                f" FROM {quote(other.logical_name)} o"
                f" JOIN teammembership m ON m.{theirs} = o.{quote(theirs)} WHERE m.{mine} = ?"
                f" ORDER BY o.{quote(theirs)}",
                (rid,),
            ).fetchall()
            self.stats.add_records(f"{other.logical_name}.read", len(rows))
            return ApiResponse.json(
                {
                    "@odata.context": _context(req, other, req.query.get("$select")),
                    "value": [writer.record(r) for r in rows],
                }
            )
        if tail == "/$ref" and req.method == "POST":
            ref_table, ref_id = self.resolve_ref(conn, str(req.json().get("@odata.id", "")), {})
            if ref_table is not other:
                raise ODataError(
                    400,
                    "0x80060888",
                    f"{MEMBERSHIP} of a {table.logical_name} links to"
                    f" {other.entity_set}, not {ref_table.entity_set}",
                )
            team, user = (rid, ref_id) if table.logical_name == "team" else (ref_id, rid)
            self._change_members(conn, team, [user], add=True)
            return ApiResponse(204, {"OData-Version": "4.0"})
        match = re.fullmatch(r"\(([^)]*)\)/\$ref", tail)
        if match and req.method == "DELETE":
            other_id = parse_key(match.group(1))
            if not isinstance(other_id, str):
                raise ODataError(400, "0x80060888", "Disassociate by GUID")
            team, user = (rid, other_id) if table.logical_name == "team" else (other_id, rid)
            self._change_members(conn, team, [user], add=False)
            return ApiResponse(204, {"OData-Version": "4.0"})
        raise ODataError(405, "", f"{req.method} {MEMBERSHIP}{tail} is not supported")

    def _change_members(self, conn: Connection, team: str, users: list[str], add: bool) -> None:
        for user in users:
            if self.find_id(conn, self.store.tables["systemuser"], user) is None:
                raise not_found("systemuser", user)
            if add:
                conn.exec_driver_sql(
                    "INSERT OR IGNORE INTO teammembership (teamid, systemuserid) VALUES (?, ?)", (team, user)
                )
            else:
                conn.exec_driver_sql(
                    "DELETE FROM teammembership WHERE teamid = ? AND systemuserid = ?", (team, user)
                )
        # A membership change shows up as a change of the team for change-tracking readers.
        self._write(conn, self.store.tables["team"], team, {})

    def _expand(self, conn: Connection, req: ApiRequest, table: Table, records: list[dict[str, Any]]) -> None:
        """``$expand`` of ``teammembership_association`` (teams, system users) and of lookups.

        A lookup expands under its navigation name (``parentaccountid``, ``customerid_contact``,
        ``ownerid``) with an optional ``($select=...)``; see :meth:`_expand_lookup`.
        """
        text = req.query.get("$expand")
        if not text or not records:
            return
        for part in split_top_level(text):
            name, _, inner = part.partition("(")
            name = name.strip()
            select = None
            for opt in split_top_level(inner.rstrip(")"), ";"):
                if opt.startswith("$select="):
                    select = opt[len("$select=") :]
            if name in table.navigation():
                self._expand_lookup(conn, req, table, records, name, select)
                continue
            if activities.expand_parties(self, conn, req, table, records, name, select):
                continue
            if name != MEMBERSHIP or table.logical_name not in ("team", "systemuser"):
                raise ODataError(
                    400,
                    "0x80060888",
                    f"$expand of '{name}' is not supported by the emulator"
                    f" (only {MEMBERSHIP} on teams and systemusers, lookups, and activity parties)",
                )
            for record in records:
                sub = ApiRequest("GET", "", {"$select": select} if select else {}, {}, b"", req.base)
                resp = self.membership(conn, sub, table, record[table.primary_id], MEMBERSHIP)
                record[MEMBERSHIP] = msgspec.json.decode(resp.body)["value"]

    def _expand_lookup(
        self,
        conn: Connection,
        req: ApiRequest,
        table: Table,
        records: list[dict[str, Any]],
        nav: str,
        select: str | None,
    ) -> None:
        """Put the record a lookup points at under ``nav`` (``null`` when there is none).

        A typed navigation of a polymorphic lookup (``customerid_contact``) is ``null`` when the
        lookup points at another table, as in Dataverse; ``ownerid`` follows the stored owner type.
        The lookup values are read from storage, so they need not be in the outer ``$select``.
        """
        attr, target = table.navigation()[nav]
        typed = attr.polymorphic and attr.type != OWNER
        type_col = f", {quote(attr.name + 'type')}" if attr.polymorphic else ""
        ids = [r[table.primary_id] for r in records]
        links: dict[str, tuple[str, str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.exec_driver_sql(
                f"SELECT {quote(table.primary_id)}, {quote(attr.name)}{type_col} FROM"
                f" {quote(table.logical_name)} WHERE {quote(table.primary_id)} IN ({marks})",
                tuple(chunk),
            ).fetchall()
            for row in rows:
                kind = row[2] if attr.polymorphic else target
                if row[1] and (not typed or kind == target):
                    links[row[0]] = (kind or target, row[1])
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in {k for k, _ in links.values()}:
            other = self.store.tables.get(kind)
            if other is None:
                continue
            writer = self.writer(other, select_attrs(other, select), set())
            wanted = sorted({g for k, g in links.values() if k == kind})
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = conn.exec_driver_sql(
                    f"SELECT {', '.join(map(quote, writer.columns))} FROM {quote(other.logical_name)}"
                    f" WHERE {quote(other.primary_id)} IN ({','.join('?' * len(chunk))})",
                    tuple(chunk),
                ).fetchall()
                for row in rows:
                    rec = writer.record(row)
                    found[(kind, rec[other.primary_id])] = rec
        for record in records:
            link = links.get(record[table.primary_id])
            record[nav] = found.get(link) if link else None


def _records(writer: RowWriter, rows: list[Any]) -> list[Any]:
    """JSON records of a page: pre-built by SQLite when the writer could, else built here."""
    if writer.json_sql:
        return [msgspec.Raw(r[0]) for r in rows]
    return [writer.record(r) for r in rows]


def _scalar(conn: Connection, sql: str, params: tuple[Any, ...]) -> Any:
    """The first column of the first row of ``sql`` (None when there is none), on the DB-API."""
    row = raw_connection(conn).execute(sql, params).fetchone()
    return None if row is None else row[0]


def _annotations(prefer: dict[str, str]) -> set[str]:
    raw = prefer.get("odata.include-annotations", "")
    return {a.strip() for a in raw.split(",") if a.strip()}


def _context(req: ApiRequest, table: Table, select: str | None) -> str:
    return f"{req.api_root}/$metadata#{table.entity_set}" + (f"({select})" if select else "")


def _key_text(key: str | dict[str, str]) -> str:
    return key if isinstance(key, str) else ",".join(f"{k}='{v}'" for k, v in key.items())


def _encode_query(params: dict[str, str]) -> str:
    return "&".join(f"{k}={urllib.parse.quote(v, safe=',()$=')}" for k, v in params.items())


def _link(req: ApiRequest, replace: dict[str, str]) -> str:
    """Return this request's URL with ``replace`` applied to its query (for nextLink)."""
    params = {k: v for k, v in req.query.items() if k not in replace}
    params.update(replace)
    return f"{req.api_root}/{req.path.strip('/')}?{_encode_query(params)}"
