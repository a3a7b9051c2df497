"""Marketing lists and campaigns: the list actions, and what the generic resources must not do.

Actions (called alone or inside ``$batch``, counted by the service protection limits like any
Web API call; a failure rolls the whole action back):

* ``POST lists(<id>)/Microsoft.Dynamics.CRM.AddMemberList`` ``{"EntityId": <guid>}``: adds one
  record of the list's member table (``createdfromcode``); answers ``AddMemberListResponse``
  ``{"Id": <listmemberid>}``. A record that is a member already is not added twice (its
  ``listmemberid`` is answered).
* ``POST AddListMembersList`` (unbound) ``{"List": {"listid": …}, "Members": [{"@odata.type":
  "Microsoft.Dynamics.CRM.contact", "contactid": …}, …]}``: the same for many; 204.
* ``POST lists(<id>)/Microsoft.Dynamics.CRM.RemoveMemberList`` ``{"EntityId": <guid>}``: removes
  the member (by its record id, or by ``listmemberid``: the reference is ambiguous); a record
  that is not a member is a no-op (unconfirmed); 204.
* ``POST lists(<id>)/Microsoft.Dynamics.CRM.AddItemCampaign`` ``{"Campaign": {"campaignid": …}}``:
  the documented Web API shape (bound to the item, here a list); answers the ``campaignitem``.
  Attaching the same list again answers the existing item (unconfirmed).

Refusals: a member of another table than the list's member type is a 400 (``InvalidArgument``;
the code Dataverse uses is unconfirmed), a record found in no member table a 404
(``ObjectDoesNotExist``), a dynamic, locked or inactive list a 400 (unconfirmed codes).
``listmembers`` and ``campaignitems`` are written only by these actions (``POST`` answers 400,
``PATCH`` 405); ``listmembers`` serves ``GET`` of the collection only, as documented, and
``DELETE listmembers(<id>)`` removes a member. Members leave in change tracking as deletes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import msgspec

from emulators.dynamics import activities
from emulators.dynamics.errors import INVALID_ARGUMENT, ODataError, not_found
from emulators.dynamics.marketing_schema import MEMBER_TABLES, PARTY, POINTER
from emulators.dynamics.odata import GUID_RE, parse_key
from emulators.dynamics.store import new_guid, quote

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from emulators.dynamics.schema import Table
    from emulators.dynamics.service import ApiRequest, ApiResponse, Refs, WebApi

NS = "Microsoft.Dynamics.CRM."
ADD_MEMBER, REMOVE_MEMBER, ADD_ITEM = f"{NS}AddMemberList", f"{NS}RemoveMemberList", f"{NS}AddItemCampaign"
ADD_MEMBERS = ("AddListMembersList", f"{NS}AddListMembersList")
_READ_ONLY = {POINTER: "activitypointers", PARTY: "activityparties"}
_ACTION_WRITTEN = {"listmember": "AddMemberList", "campaignitem": "AddItemCampaign"}


def _bad(message: str) -> ODataError:
    return ODataError(400, INVALID_ARGUMENT, message)


def _no_content() -> ApiResponse:
    from emulators.dynamics.service import ApiResponse

    return ApiResponse(204, {"OData-Version": "4.0"})


def _json(body: dict[str, Any]) -> ApiResponse:
    from emulators.dynamics.service import ApiResponse

    return ApiResponse.json(body)


def unbound(api: WebApi, conn: Connection, req: ApiRequest, path: str) -> ApiResponse | None:
    """Run an unbound marketing action named by ``path``; None when ``path`` is not one."""
    if path not in ADD_MEMBERS or req.method != "POST":
        return None
    body = req.json() or {}
    ref = body.get("List") if isinstance(body, dict) else None
    list_id = str((ref or {}).get("listid") or "").lower() if isinstance(ref, dict) else ""
    if not GUID_RE.match(list_id):
        raise _bad("AddListMembersList needs 'List' as an entity reference with 'listid'")
    members = body.get("Members")
    if not isinstance(members, list):
        raise _bad("AddListMembersList needs 'Members', an array of entity references")
    refs = [_member_ref(m, i) for i, m in enumerate(members)]
    add_members(api, conn, list_id, refs)
    return _no_content()


def route(
    api: WebApi,
    conn: Connection,
    req: ApiRequest,
    table: Table,
    key: str | None,
    rest: str | None,
    refs: Refs,
) -> ApiResponse | None:
    """Serve what the marketing tables do differently; None lets the generic resource answer."""
    name, method = table.logical_name, req.method
    if name in _READ_ONLY and (method != "GET" or (name == PARTY and key is not None)):
        raise ODataError(405, "", f"{method} is not supported on {_READ_ONLY[name]} (GET only)")
    if name in _ACTION_WRITTEN and rest is None:
        if key is None and method == "POST":
            raise _bad(f"Write {table.entity_set} with the {_ACTION_WRITTEN[name]} action")
        if key is not None and method == "PATCH":
            raise ODataError(405, "", f"PATCH is not supported on {table.entity_set}")
        if name == "listmember" and key is not None and method == "GET":
            raise ODataError(405, "", "listmembers supports GET of the collection only")
        if name == "listmember" and key is not None and method == "DELETE":
            return _delete_member(api, conn, req, table, key)
    if name == "list" and key is not None and rest in (ADD_MEMBER, REMOVE_MEMBER, ADD_ITEM):
        if method != "POST":
            raise ODataError(405, "", f"{rest} is an action: call it with POST")
        return _list_action(api, conn, req, table, key, rest)
    if name == "list" and rest is None and method in ("POST", "PATCH"):
        _check_member_type(api, conn, req, table, key)
    if table.is_activity and rest is None and method in ("POST", "PATCH"):
        return _write_with_parties(api, conn, req, table, key, refs)
    return None


def after_delete(api: WebApi, conn: Connection, table: Table, rid: str) -> None:
    """Cascade a delete: an activity's pointer and parties, a list's or a person's memberships."""
    name = table.logical_name
    if table.is_activity:
        activities.forget(api, conn, rid)
    elif name == "list":
        _delete_rows(api, conn, "listmember", "listid = ?", (rid,))
        _delete_rows(api, conn, "campaignitem", "entityid = ?", (rid,))
    elif name == "campaign":
        _delete_rows(api, conn, "campaignitem", "campaignid = ?", (rid,))
    elif name in MEMBER_TABLES.values() and "listmember" in api.store.tables:
        held = conn.exec_driver_sql("SELECT listid FROM listmember WHERE entityid = ?", (rid,))
        lists = [r[0] for r in held]
        _delete_rows(api, conn, "listmember", "entityid = ?", (rid,))
        for list_id in sorted(set(lists)):
            _recount(api, conn, list_id)


# -- writes the generic resources cannot do alone ------------------------------------------------


def _write_with_parties(
    api: WebApi, conn: Connection, req: ApiRequest, table: Table, key: str | None, refs: Refs
) -> ApiResponse | None:
    body, parties = activities.split_parties(table, req.json())
    if parties is None:
        return None
    inner = dataclasses.replace(req, body=msgspec.json.encode(body))
    if key is None:
        resp = api.create(conn, inner, table, refs)
    else:
        resp = api.upsert(conn, inner, table, parse_key(key), refs)
    rid = resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    activities.write_parties(api, conn, table, rid, parties, refs)
    return resp


def _check_member_type(api: WebApi, conn: Connection, req: ApiRequest, table: Table, key: str | None) -> None:
    """``createdfromcode`` is required on create and cannot change (error codes unconfirmed)."""
    body = req.json()
    if not isinstance(body, dict):
        return
    existing = api.find_id(conn, table, parse_key(key)) if key is not None else None
    update_only = bool(req.headers.get("if-match"))  # a missing list answers 404 further on
    if existing is None and not update_only and body.get("createdfromcode") is None:
        raise _bad("A marketing list needs 'createdfromcode' (1 account, 2 contact, 4 lead) when created")
    if existing is not None and "createdfromcode" in body:
        stored = _list_row(api, conn, existing)["createdfromcode"]
        if body["createdfromcode"] != stored:
            raise _bad("The member type (createdfromcode) of a marketing list cannot be changed")


def _list_action(
    api: WebApi, conn: Connection, req: ApiRequest, table: Table, key: str, action: str
) -> ApiResponse:
    list_id = api.find_id(conn, table, parse_key(key))
    if list_id is None:
        raise not_found("list", key)
    body = req.json() or {}
    if not isinstance(body, dict):
        raise _bad(f"{action} needs a JSON object body")
    if action == ADD_ITEM:
        return _add_item(api, conn, req, list_id, body.get("Campaign"))
    entity_id = str(body.get("EntityId") or "").lower()
    if not GUID_RE.match(entity_id):
        raise _bad(f"{action.removeprefix(NS)} needs 'EntityId', a GUID")
    if action == REMOVE_MEMBER:
        remove_member(api, conn, list_id, entity_id)
        return _no_content()
    member_ids = add_members(api, conn, list_id, [(None, entity_id)])
    return _json(
        {
            "@odata.context": f"{req.api_root}/$metadata#{NS}AddMemberListResponse",
            "Id": member_ids[0],
        }
    )


# -- members -------------------------------------------------------------------------------------


def _member_ref(ref: Any, index: int) -> tuple[str | None, str]:
    """(table or None, id) of one entity reference of ``Members``."""
    if not isinstance(ref, dict):
        raise _bad(f"Members[{index}] must be an entity reference")
    kind = str(ref.get("@odata.type") or "").lstrip("#").removeprefix(NS) or None
    ids = [str(v).lower() for k, v in ref.items() if k.endswith("id") and isinstance(v, str)]
    if kind is not None:
        ids = [str(ref.get(f"{kind}id") or "").lower()]
    if len(ids) != 1 or not GUID_RE.match(ids[0]):
        raise _bad(f"Members[{index}] needs the member's id (e.g. 'contactid')")
    return kind, ids[0]


def _list_row(api: WebApi, conn: Connection, list_id: str) -> dict[str, Any]:
    row = conn.exec_driver_sql(
        "SELECT createdfromcode, type, lockstatus, statecode FROM list WHERE listid = ?", (list_id,)
    ).fetchone()
    if row is None:
        raise not_found("list", list_id)
    return {"createdfromcode": row[0], "type": row[1], "lockstatus": row[2], "statecode": row[3]}


def add_members(api: WebApi, conn: Connection, list_id: str, refs: list[tuple[str | None, str]]) -> list[str]:
    """Add records to a static list; return their ``listmemberid`` (existing members keep theirs)."""
    lists = api.store.tables["list"]
    api.require(lists, "Write")  # the privilege Dataverse checks is unconfirmed
    row = _list_row(api, conn, list_id)
    if row["type"]:
        raise _bad("Members cannot be added to a dynamic marketing list")
    if row["lockstatus"]:
        raise _bad("The marketing list is locked: no members can be added")
    if row["statecode"]:
        raise _bad("The marketing list is inactive: reactivate it before adding members")
    member_table = api.store.tables[MEMBER_TABLES[int(row["createdfromcode"])]]
    api.require(member_table, "Read")
    out = [_add_one(api, conn, list_id, member_table, kind, rid) for kind, rid in refs]
    _recount(api, conn, list_id)
    return out


def _add_one(api: WebApi, conn: Connection, list_id: str, members: Table, kind: str | None, rid: str) -> str:
    expected = members.logical_name
    if kind is not None and kind != expected:
        raise _wrong_type(kind, expected, rid)
    if api.find_id(conn, members, rid) is None:
        for other in MEMBER_TABLES.values():
            if other != expected and api.find_id(conn, api.store.tables[other], rid) is not None:
                raise _wrong_type(other, expected, rid)
        raise not_found(expected, rid)
    existing = conn.exec_driver_sql(
        "SELECT listmemberid FROM listmember WHERE listid = ? AND entityid = ?", (list_id, rid)
    ).scalar()
    if existing:
        return str(existing)
    table = api.store.tables["listmember"]
    values: dict[str, Any] = {
        table.primary_id: new_guid(),
        "listid": list_id,
        "entityid": rid,
        "entityidtype": expected,
        "entitytype": expected,
    }
    api._system_values(table, values, creating=True)
    api._insert(conn, table, values)
    return str(values[table.primary_id])


def _wrong_type(kind: str, expected: str, rid: str) -> ODataError:
    return _bad(
        f"{kind} {rid} cannot be a member of this marketing list: its member type"
        f" (createdfromcode) is {expected}"
    )


def remove_member(api: WebApi, conn: Connection, list_id: str, entity_id: str) -> None:
    """Remove a member by its record id or its ``listmemberid``; a non-member is a no-op."""
    api.require(api.store.tables["list"], "Write")
    _list_row(api, conn, list_id)
    where = "listid = ? AND (entityid = ? OR listmemberid = ?)"
    if _delete_rows(api, conn, "listmember", where, (list_id, entity_id, entity_id)):
        _recount(api, conn, list_id)


def _delete_member(api: WebApi, conn: Connection, req: ApiRequest, table: Table, key: str) -> ApiResponse:
    api.require(table, "Delete")
    rid = parse_key(key)
    list_id = conn.exec_driver_sql("SELECT listid FROM listmember WHERE listmemberid = ?", (rid,)).scalar()
    if list_id is None:
        raise not_found("listmember", key)
    _delete_rows(api, conn, "listmember", "listmemberid = ?", (rid,))
    _recount(api, conn, str(list_id))
    return _no_content()


def _recount(api: WebApi, conn: Connection, list_id: str) -> None:
    """Write the list's ``membercount`` (a new version of the list, as any update)."""
    count = conn.exec_driver_sql("SELECT COUNT(*) FROM listmember WHERE listid = ?", (list_id,)).scalar()
    if conn.exec_driver_sql("SELECT 1 FROM list WHERE listid = ?", (list_id,)).scalar():
        api._write(conn, api.store.tables["list"], list_id, {"membercount": int(count or 0)})


def _delete_rows(api: WebApi, conn: Connection, table: str, where: str, params: tuple[Any, ...]) -> int:
    """Delete rows of ``table`` with tombstones (change tracking reports them as deleted)."""
    found = api.store.tables.get(table)
    if found is None:
        return 0
    pk = quote(found.primary_id)
    ids = [r[0] for r in conn.exec_driver_sql(f"SELECT {pk} FROM {quote(table)} WHERE {where}", params)]
    for rid in ids:
        conn.exec_driver_sql(f"DELETE FROM {quote(table)} WHERE {pk} = ?", (rid,))
        conn.exec_driver_sql(
            "INSERT INTO deleted_records (entity, id, versionnumber) VALUES (?, ?, ?)",
            (table, rid, api.store.next_version()),
        )
    api.stats.add_records(f"{table}.delete", len(ids))
    return len(ids)


# -- campaigns -----------------------------------------------------------------------------------


def _add_item(api: WebApi, conn: Connection, req: ApiRequest, list_id: str, ref: Any) -> ApiResponse:
    campaign_id = str(ref.get("campaignid") or "").lower() if isinstance(ref, dict) else ""
    if not GUID_RE.match(campaign_id):
        raise _bad("AddItemCampaign needs 'Campaign' as an entity reference with 'campaignid'")
    campaigns = api.store.tables["campaign"]
    api.require(campaigns, "Write")  # the privilege Dataverse checks is unconfirmed
    if api.find_id(conn, campaigns, campaign_id) is None:
        raise not_found("campaign", campaign_id)
    items = api.store.tables["campaignitem"]
    item_id = conn.exec_driver_sql(
        "SELECT campaignitemid FROM campaignitem WHERE campaignid = ? AND entityid = ?",
        (campaign_id, list_id),
    ).scalar()
    if item_id is None:
        item_id = new_guid()
        values: dict[str, Any] = {
            items.primary_id: item_id,
            "campaignid": campaign_id,
            "entityid": list_id,
            "entitytype": "list",
        }
        api._system_values(items, values, creating=True)
        api._insert(conn, items, values)
    writer = api.writer(items, list(items.attributes.values()), set())
    row = conn.exec_driver_sql(
        f"SELECT {', '.join(map(quote, writer.columns))} FROM campaignitem WHERE campaignitemid = ?",
        (item_id,),
    ).one()
    return _json({"@odata.context": f"{req.api_root}/$metadata#campaignitems/$entity", **writer.record(row)})
