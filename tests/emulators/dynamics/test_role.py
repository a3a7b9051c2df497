"""The application user's role: RetrieveUserPrivileges, field security, and writes it refuses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from emulators.dynamics.schema import initial_tables
from tests.emulators.dynamics.conftest import Dataverse

PRIVILEGE_DENIED = "0x80040220"
SECURED_CREATE_MISSING = "0x8004F502"
SECURED_UPDATE_MISSING = "0x8004F507"
USER_PRIVILEGES = "Microsoft.Dynamics.CRM.RetrieveUserPrivileges"
ATTRIBUTE_PRIVILEGES = "Microsoft.Dynamics.CRM.RetrievePrincipalAttributePrivileges"


@pytest.fixture(autouse=True)
def _default_role(dataverse: Dataverse) -> Iterator[None]:
    """Every test starts and ends with the default role."""
    dataverse.emu.admin("POST", "role", json={"reset": True})
    yield
    dataverse.emu.admin("POST", "role", json={"reset": True})


def set_role(dv: Dataverse, **spec: Any) -> dict[str, Any]:
    return dict(dv.emu.admin("POST", "role", json=spec).json())


def user_function(dv: Dataverse, name: str, parens: str = "()") -> dict[str, Any]:
    user = dv.get("WhoAmI").json()["UserId"]
    resp = dv.get(f"systemusers({user})/{name}{parens}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def held(dv: Dataverse) -> set[str]:
    return {p["PrivilegeName"] for p in user_function(dv, USER_PRIVILEGES)["RolePrivileges"]}


def column_id(dv: Dataverse, table: str, column: str) -> str:
    return str(
        dv.get(f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{column}')").json()[
            "MetadataId"
        ]
    )


def first_id(dv: Dataverse, entity_set: str) -> str:
    table = next(t for t in initial_tables().values() if t.entity_set == entity_set)
    return str(dv.get(f"{entity_set}?$select={table.primary_id}&$top=1").json()["value"][0][table.primary_id])


def refusal(resp: requests.Response) -> tuple[int, str, str]:
    error = resp.json()["error"]
    return resp.status_code, error["code"], error["message"]


@pytest.mark.parametrize("parens", ["()", ""])
def test_the_default_role_holds_every_table_privilege_at_global_depth(dataverse, parens):
    who = dataverse.get("WhoAmI").json()
    body = user_function(dataverse, USER_PRIVILEGES, parens)
    assert body["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse")
    privileges = body["RolePrivileges"]
    assert len(privileges) == 6 * len(initial_tables())
    assert {p["Depth"] for p in privileges} == {"Global"}
    assert {p["BusinessUnitId"] for p in privileges} == {who["BusinessUnitId"]}
    names = {p["PrivilegeName"] for p in privileges}
    assert {
        "prvReadLead",
        "prvWriteLead",
        "prvCreatenew_project",
        "prvAppendToAccount",
        "prvReadUser",
    } <= names


def test_privilege_ids_match_the_table_definitions(dataverse):
    defined = dataverse.get("EntityDefinitions(LogicalName='opportunity')?$select=Privileges").json()[
        "Privileges"
    ]
    by_name = {
        p["PrivilegeName"]: p["PrivilegeId"]
        for p in user_function(dataverse, USER_PRIVILEGES)["RolePrivileges"]
    }
    assert {p["Name"]: p["PrivilegeId"] for p in defined} == {
        name: pid for name, pid in by_name.items() if name.endswith("Opportunity")
    }


def test_the_default_role_has_no_secured_column(dataverse):
    assert user_function(dataverse, ATTRIBUTE_PRIVILEGES)["AttributePrivileges"] == []
    secured = dataverse.get(
        "EntityDefinitions(LogicalName='lead')/Attributes?$select=LogicalName&$filter=IsSecured eq true"
    )
    assert secured.json()["value"] == []


def test_a_narrowed_role_is_what_both_functions_answer(dataverse):
    role = set_role(
        dataverse,
        deny=[{"table": "opportunity", "privilege": "Write"}],
        secured=[{"table": "lead", "column": "telephone2", "read": True, "create": False, "update": False}],
    )
    assert role["deny"] == [{"table": "opportunity", "privilege": "Write"}]
    names = held(dataverse)
    assert "prvWriteOpportunity" not in names
    assert {"prvReadOpportunity", "prvCreateOpportunity", "prvWriteLead"} <= names
    rights = user_function(dataverse, ATTRIBUTE_PRIVILEGES)["AttributePrivileges"]
    assert [(r["AttributeId"], r["CanRead"], r["CanCreate"], r["CanUpdate"]) for r in rights] == [
        (column_id(dataverse, "lead", "telephone2"), 4, 0, 0)
    ]
    secured = dataverse.get(
        "EntityDefinitions(LogicalName='lead')/Attributes?$select=LogicalName&$filter=IsSecured eq true"
    )
    assert [a["LogicalName"] for a in secured.json()["value"]] == ["telephone2"]


def test_another_user_is_answered_with_the_default_role(dataverse):
    set_role(dataverse, deny=[{"table": "lead", "privilege": "Read"}])
    me = dataverse.get("WhoAmI").json()["UserId"]
    other = next(
        u["systemuserid"]
        for u in dataverse.get("systemusers?$select=fullname").json()["value"]
        if u["systemuserid"] != me
    )
    body = dataverse.get(f"systemusers({other})/{USER_PRIVILEGES}()").json()
    assert "prvReadLead" in {p["PrivilegeName"] for p in body["RolePrivileges"]}


@pytest.mark.parametrize(
    ("privilege", "method", "path", "body"),
    [
        ("Write", "PATCH", "existing", {"name": "Renamed"}),
        ("Create", "POST", "opportunities", {"name": "New"}),
        ("Create", "PATCH", "missing", {"name": "Upserted"}),
        ("Delete", "DELETE", "existing", None),
        ("Read", "GET", "opportunities?$select=name", None),
    ],
)
def test_an_operation_without_its_table_privilege_is_refused_naming_it(
    dataverse, privilege, method, path, body
):
    target = {
        "existing": f"opportunities({first_id(dataverse, 'opportunities')})",
        "missing": f"opportunities({uuid.uuid4()})",
    }.get(path, path)
    set_role(dataverse, deny=[{"table": "opportunity", "privilege": privilege}])
    status, code, message = refusal(dataverse.call(method, target, json=body))
    assert (status, code) == (403, PRIVILEGE_DENIED)
    assert f"prv{privilege}Opportunity" in message


def test_binding_a_lookup_needs_append_and_append_to(dataverse):
    account = first_id(dataverse, "accounts")
    set_role(dataverse, deny=[{"table": "account", "privilege": "AppendTo"}])
    resp = dataverse.call(
        "POST",
        "contacts",
        json={"lastname": "Linked", "parentcustomerid_account@odata.bind": f"/accounts({account})"},
    )
    assert refusal(resp)[0] == 403
    assert "prvAppendToAccount" in refusal(resp)[2]


def test_a_batch_part_and_create_multiple_are_refused_too(dataverse):
    set_role(
        dataverse,
        deny=[
            {"table": "opportunity", "privilege": "Write"},
            {"table": "opportunity", "privilege": "Create"},
        ],
    )
    opportunity = first_id(dataverse, "opportunities")
    boundary = f"batch_{uuid.uuid4().hex}"
    part = (
        "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"PATCH /api/data/v9.2/opportunities({opportunity}) HTTP/1.1\r\n"
        'Content-Type: application/json; type=entry\r\n\r\n{"name": "Batched"}\r\n'
    )
    batch = dataverse.call(
        "POST",
        "$batch",
        data=f"--{boundary}\r\n{part}--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Prefer": "odata.continue-on-error",
        },
    )
    assert batch.status_code == 200
    assert "HTTP/1.1 403 Forbidden" in batch.text
    assert "prvWriteOpportunity" in batch.text
    multiple = dataverse.call(
        "POST",
        "opportunities/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.opportunity", "name": "Many"}]},
    )
    assert refusal(multiple)[:2] == (403, PRIVILEGE_DENIED)
    assert "prvCreateOpportunity" in refusal(multiple)[2]


def test_setting_a_secured_column_without_permission_is_refused_naming_it(dataverse):
    set_role(
        dataverse,
        secured=[{"table": "lead", "column": "telephone2", "read": True, "create": False, "update": False}],
    )
    lead = first_id(dataverse, "leads")
    status, code, message = refusal(
        dataverse.call("PATCH", f"leads({lead})", json={"telephone2": "555-0101"})
    )
    assert (status, code) == (403, SECURED_UPDATE_MISSING)
    assert "'telephone2'" in message
    status, code, message = refusal(
        dataverse.call("POST", "leads", json={"lastname": "New", "telephone2": "555-0102"})
    )
    assert (status, code) == (403, SECURED_CREATE_MISSING)
    assert "'telephone2'" in message
    assert dataverse.call("PATCH", f"leads({lead})", json={"jobtitle": "Unsecured"}).status_code == 204


def test_a_secured_column_without_read_permission_reads_as_null(dataverse):
    lead = first_id(dataverse, "leads")
    assert dataverse.call("PATCH", f"leads({lead})", json={"telephone2": "555-0199"}).status_code == 204
    set_role(
        dataverse,
        secured=[{"table": "lead", "column": "telephone2", "read": False, "create": True, "update": True}],
    )
    assert dataverse.get(f"leads({lead})?$select=telephone2").json()["telephone2"] is None
    assert dataverse.get(f"leads({lead})/telephone2").json()["value"] is None
    rows = dataverse.get(f"leads?$select=telephone2&$filter=leadid eq {lead}").json()["value"]
    assert rows[0]["telephone2"] is None
    set_role(
        dataverse,
        secured=[{"table": "lead", "column": "telephone2", "read": True, "create": True, "update": True}],
    )
    assert dataverse.get(f"leads({lead})?$select=telephone2").json()["telephone2"] == "555-0199"


@pytest.mark.parametrize(
    "spec",
    [
        {"deny": [{"table": "nosuchtable", "privilege": "Read"}]},
        {"deny": [{"table": "lead", "privilege": "Fly"}]},
        {"secured": [{"table": "lead", "column": "nosuchcolumn", "read": True}]},
    ],
)
def test_the_role_action_refuses_unknown_names(dataverse, spec):
    resp = requests.post(
        f"{dataverse.emu.base_url}/_emulator/role", json=spec, verify=dataverse.emu.verify, timeout=30
    )
    assert resp.status_code == 400
