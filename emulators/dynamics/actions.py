"""The Dataverse actions that reshape persons: ``QualifyLead`` (bound) and ``Merge`` (unbound).

Both write through the Web API's own insert and update paths, so every record they create or
change gets a new version number and shows in change tracking, as the real actions' writes do.

* ``POST leads(<id>)/Microsoft.Dynamics.CRM.QualifyLead`` with ``CreateAccount``,
  ``CreateContact``, ``CreateOpportunity`` and ``Status`` (a Qualified status reason, 3): creates
  the asked-for records from the lead's values (the contact's and account's ``originatingleadid``
  and the opportunity's point at the lead; the contact's parent customer is the new account),
  sets the lead Qualified with ``qualifyingopportunityid``, and answers the created records'
  references. A lead that is not Open is refused, as Dataverse refuses a closed lead.
* ``POST Merge`` with ``Target`` and ``Subordinate`` (entity references with ``@odata.type``),
  ``UpdateContent`` (values written onto the target) and ``PerformParentingChecks``: the
  subordinate is deactivated with ``merged = true`` and ``masterid`` = the target. For account,
  contact and lead, as the real action (incidents are not emulated).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulators.dynamics.errors import ODataError, not_found
from emulators.dynamics.store import new_guid, quote

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from emulators.dynamics.schema import Table
    from emulators.dynamics.service import ApiRequest, WebApi

QUALIFY_LEAD = "Microsoft.Dynamics.CRM.QualifyLead"
QUALIFIED, DISQUALIFIED = 1, 2  # lead statecode
_QUALIFIED_STATUS = 3
_CONTACT_COPY = (
    "firstname",
    "lastname",
    "emailaddress1",
    "jobtitle",
    "telephone1",
    "mobilephone",
    "address1_line1",
    "address1_city",
    "address1_stateorprovince",
    "address1_postalcode",
    "address1_country",
    "donotemail",
    "donotphone",
    "donotbulkemail",
)
# Subordinate state after a merge: inactive (lead: disqualified), status reason of that state.
_MERGED_STATE = {"lead": (DISQUALIFIED, 6), "contact": (1, 2), "account": (1, 2)}


def _row(conn: Connection, table: Table, rid: str) -> dict[str, Any]:
    row = (
        conn.exec_driver_sql(
            f"SELECT * FROM {quote(table.logical_name)} WHERE {quote(table.primary_id)} = ?", (rid,)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise not_found(table.logical_name, rid)
    return dict(row)


def _create(api: WebApi, conn: Connection, table: Table, values: dict[str, Any]) -> str:
    rid = new_guid()
    row = {table.primary_id: rid, **{k: v for k, v in values.items() if v is not None}}
    api._system_values(table, row, creating=True)
    api._insert(conn, table, row)
    return rid


def qualify_lead(api: WebApi, conn: Connection, req: ApiRequest, lead: Table, rid: str) -> dict[str, Any]:
    """Run ``QualifyLead`` on lead ``rid``; returns the response body (the created records)."""
    body = req.json() or {}
    if "Status" not in body:
        raise ODataError(400, "0x80040203", "Status is required for QualifyLead.")
    status = int(body["Status"])
    if status != _QUALIFIED_STATUS:
        raise ODataError(400, "0x80040203", f"{status} is not a valid status code for state Qualified.")
    row = _row(conn, lead, rid)
    if int(row.get("statecode") or 0) != 0:
        raise ODataError(
            400, "0x80040203", "The lead is closed. You cannot convert or qualify a closed lead."
        )
    tables = api.store.tables
    created: list[dict[str, Any]] = []
    account_id = contact_id = opportunity_id = None
    if body.get("CreateAccount") and row.get("companyname"):
        account = tables["account"]
        account_id = _create(
            api,
            conn,
            account,
            {
                "name": row["companyname"],
                "telephone1": row.get("telephone1"),
                "websiteurl": row.get("websiteurl"),
                "originatingleadid": rid,
            },
        )
        created.append({"@odata.type": "#Microsoft.Dynamics.CRM.account", "accountid": account_id})
    if body.get("CreateContact"):
        contact = tables["contact"]
        values = {c: row.get(c) for c in _CONTACT_COPY if c in contact.attributes}
        values["originatingleadid"] = rid
        if account_id:
            values["parentcustomerid"], values["parentcustomeridtype"] = account_id, "account"
        contact_id = _create(api, conn, contact, values)
        created.append({"@odata.type": "#Microsoft.Dynamics.CRM.contact", "contactid": contact_id})
    if body.get("CreateOpportunity"):
        opportunity = tables["opportunity"]
        customer = account_id or contact_id or body.get("OpportunityCustomerId")
        kind = "account" if account_id else "contact" if contact_id else None
        opportunity_id = _create(
            api,
            conn,
            opportunity,
            {
                "name": row.get("subject") or f"Opportunity for {row.get('fullname') or rid}",
                "originatingleadid": rid,
                "parentaccountid": account_id,
                "parentcontactid": contact_id,
                "customerid": customer if kind else None,
                "customeridtype": kind,
            },
        )
        created.append(
            {"@odata.type": "#Microsoft.Dynamics.CRM.opportunity", "opportunityid": opportunity_id}
        )
    api._write(
        conn,
        lead,
        rid,
        {
            "statecode": QUALIFIED,
            "statuscode": status,
            "qualifyingopportunityid": opportunity_id,
            "parentaccountid": account_id or row.get("parentaccountid"),
            "parentcontactid": contact_id or row.get("parentcontactid"),
        },
    )
    return {
        "@odata.context": f"{req.api_root}/$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)",
        "value": created,
    }


def _reference(api: WebApi, conn: Connection, ref: Any, what: str) -> tuple[Table, str]:
    if not isinstance(ref, dict) or "@odata.type" not in ref:
        raise ODataError(400, "0x80040203", f"{what} must be an entity reference with @odata.type")
    logical = str(ref["@odata.type"]).rsplit(".", 1)[-1].lstrip("#")
    table = api.store.tables.get(logical)
    if table is None or logical not in _MERGED_STATE:
        raise ODataError(400, "0x80040203", f"Merge is not supported for {logical!r}")
    rid = str(ref.get(table.primary_id) or "").lower()
    if api.find_id(conn, table, rid) is None:
        raise not_found(table.logical_name, rid)
    return table, rid


def merge(api: WebApi, conn: Connection, req: ApiRequest) -> None:
    """Run ``Merge``: write ``UpdateContent`` onto the target, deactivate the subordinate."""
    body = req.json() or {}
    target_table, target = _reference(api, conn, body.get("Target"), "Target")
    sub_table, subordinate = _reference(api, conn, body.get("Subordinate"), "Subordinate")
    if sub_table.logical_name != target_table.logical_name:
        raise ODataError(400, "0x80040203", "Target and Subordinate must be of the same table")
    if target == subordinate:
        raise ODataError(400, "0x80040203", "A record cannot be merged into itself")
    if _row(conn, sub_table, subordinate).get("merged"):
        raise ODataError(400, "0x80040203", "The subordinate record is already merged")
    content = {
        k: v
        for k, v in dict(body.get("UpdateContent") or {}).items()
        if not k.startswith("@") and k != target_table.primary_id
    }
    if content:
        values = api._values(conn, target_table, content, target, {})
        api._write(conn, target_table, target, values)
    state, status = _MERGED_STATE[sub_table.logical_name]
    api._write(
        conn,
        sub_table,
        subordinate,
        {"merged": True, "masterid": target, "statecode": state, "statuscode": status},
    )
