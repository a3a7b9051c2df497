"""Dataverse → Marketo and Marketo → Dataverse mapping with validation splitting the batch."""

from __future__ import annotations

import pandas as pd
import pytest

from crm_sync.transforms import (
    SchemaError,
    canonical_to_dynamics,
    dynamics_to_canonical,
    marketo_to_canonical,
    opportunity_roles,
    to_records,
)

from .conftest import OWNER_TYPE, dataverse_rows


def test_lead_maps_casts_translates_and_resolves_owner(lead, id_map):
    rows = dataverse_rows(
        lead,
        leadid=["L1", "l2"],
        firstname=["Ann", "Bo"],
        lastname=["Lee", "Ng"],
        emailaddress1=["ann@example.com", None],
        leadsourcecode=[8, None],
        donotbulkemail=[True, False],
        revenue=[1000.5, None],
        createdon=["2024-05-01T12:00:00Z", None],
        _ownerid_value=["U1", "T1"],
        **{OWNER_TYPE: ["systemuser", "team"]},
    )
    result = dynamics_to_canonical(rows, lead, id_map)
    assert result.errors.empty
    out = result.frame.set_index("dynamics_id")
    assert out.loc["l1", "externalPersonId"] == "l1"
    assert out.loc["l1", "msdType"] == "Lead"
    assert out.loc["l1", "leadSource"] == "Web"
    assert out.loc["l1", "unsubscribed"]
    assert out.loc["l1", "annualRevenue"] == 1000.5
    assert out.loc["l1", "msdCreatedDate"] == "2024-05-01T12:00:00Z"
    assert out["externalSalesPersonId"].tolist() == ["u1", "t1"]
    assert out.loc["l1", "marketo_id"] == "500"
    assert pd.isna(out.loc["l2", "marketo_id"])


def test_invalid_rows_go_to_errors_and_the_rest_goes_on(lead):
    rows = dataverse_rows(
        lead,
        leadid=["ok", "long", "mail", "req"],
        lastname=["Lee", "x" * 300, "Ng", None],
        emailaddress1=[None, None, "not-an-email", None],
    )
    result = dynamics_to_canonical(rows, lead)
    assert result.frame["dynamics_id"].tolist() == ["ok"]
    errors = result.errors.set_index("record_id")
    assert errors.loc["long", ["field", "code", "reason"]].tolist() == [
        "lastname",
        "FIELD_LENGTH",
        "length 300 > 50",
    ]
    assert errors.loc["mail", ["field", "code"]].tolist() == ["emailaddress1", "INVALID_EMAIL"]
    assert errors.loc["req", ["field", "code"]].tolist() == ["lastname", "REQUIRED"]
    assert set(errors["entity"]) == {"lead"}
    assert set(errors["direction"]) == {"d2m"}


def test_reasons_do_not_quote_values(lead):
    rows = dataverse_rows(lead, leadid=["a"], lastname=["Lee"], emailaddress1=["secret-person@"])
    assert "secret" not in dynamics_to_canonical(rows, lead).errors["reason"].str.cat()


def test_row_without_id_is_an_error(lead):
    result = dynamics_to_canonical(dataverse_rows(lead, leadid=[None, "b"], lastname=["A", "B"]), lead)
    assert result.frame["dynamics_id"].tolist() == ["b"]
    assert result.errors[["record_id", "code"]].values.tolist() == [["row 0", "MISSING_KEY"]]


def test_missing_mapped_column_is_schema_drift(lead):
    rows = dataverse_rows(lead, leadid=["a"], lastname=["A"]).drop(columns=["jobtitle"])
    with pytest.raises(SchemaError, match=r"lead.*jobtitle"):
        dynamics_to_canonical(rows, lead)


def test_contact_parent_account_resolves_only_accounts(contact, id_map):
    parent_type = "_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
    rows = dataverse_rows(
        contact,
        contactid=["c1", "c2", "c3"],
        lastname=["A", "B", "C"],
        _parentcustomerid_value=["A1", "c9", "a-unknown"],
        **{parent_type: ["account", "contact", "account"]},
    )
    result = dynamics_to_canonical(rows, contact, id_map)
    assert result.errors.empty
    assert result.frame["externalCompanyId"].tolist()[0] == "a1"
    assert result.frame["externalCompanyId"].isna().tolist() == [False, True, True]


def test_required_lookup_unresolved_is_an_error(entities, id_map):
    project = entities["new_project"]
    rows = dataverse_rows(
        project, new_projectid=["p1", "p2"], new_name=["X", "Y"], _new_contactid_value=["C1", "c404"]
    )
    result = dynamics_to_canonical(rows, project, id_map)
    assert result.frame["leadID"].tolist() == [600]
    assert result.errors[["record_id", "field", "code"]].values.tolist() == [
        ["p2", "_new_contactid_value", "UNRESOLVED_LOOKUP"]
    ]


def test_opportunity_company_and_contact_role(entities, id_map):
    opp = entities["opportunity"]
    cust_type = "_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
    rows = dataverse_rows(
        opp,
        opportunityid=["o1", "o2", "o3"],
        name=["Deal 1", "Deal 2", "Deal 3"],
        _customerid_value=["a1", "c1", "c404"],
        customer_parent_account=[None, "a1", None],
        **{cust_type: ["account", "contact", "contact"]},
    )
    mapped = dynamics_to_canonical(rows, opp, id_map)
    assert mapped.frame["externalCompanyId"].tolist()[:2] == ["a1", "a1"]
    roles, errors = opportunity_roles(rows, opp, opp.roles, id_map)
    assert roles.to_dict("records") == [
        {"externalOpportunityId": "o2", "leadId": 600, "role": "Customer", "isPrimary": True}
    ]
    assert errors[["record_id", "code"]].values.tolist() == [["o3", "UNRESOLVED_LOOKUP"]]


def test_marketo_person_to_dynamics_columns(lead):
    persons = pd.DataFrame(
        {
            "id": [500, 501],
            "externalPersonId": ["L1", None],
            "lastName": ["Lee", "Ng"],
            "title": ["", "CTO"],
            "leadSource": ["Web", "Trade Show"],
            "doNotCall": ["true", False],
            "msdCreatedDate": ["2020-01-01T00:00:00Z", None],  # d2m only: ignored
        }
    )
    canonical = marketo_to_canonical(persons, lead)
    assert canonical.errors.empty
    assert "msdCreatedDate" not in canonical.frame
    out = canonical_to_dynamics(canonical.frame, lead)
    assert out["leadid"].tolist()[0] == "l1"
    assert out["leadsourcecode"].tolist() == [8, 7]
    assert out["donotphone"].tolist() == [True, False]
    assert pd.isna(out["jobtitle"].tolist()[0])  # empty Marketo string clears the column
    assert set(out.columns) == {"leadid", "lastname", "jobtitle", "leadsourcecode", "donotphone"}


def test_marketo_values_dataverse_would_reject_are_errors(lead):
    persons = pd.DataFrame(
        {"id": [1, 2, 3], "lastName": ["x" * 300, "", "Ok"], "leadSource": ["Web", "Web", "Radio"]}
    )
    result = marketo_to_canonical(persons, lead)
    assert result.frame["marketo_id"].tolist() == []
    got = sorted(map(tuple, result.errors[["record_id", "field", "code"]].values.tolist()))
    assert got == [
        ("1", "lastName", "FIELD_LENGTH"),
        ("2", "lastName", "REQUIRED"),
        ("3", "leadSource", "UNKNOWN_OPTION"),
    ]


def test_to_records_sends_masked_cells_and_keys():
    frame = pd.DataFrame(
        {"k": ["a", "b", "c"], "x": [1, None, 3], "y": ["p", "q", None]}, index=["a", "b", "c"]
    )
    mask = pd.DataFrame({"x": [True, True, False], "y": [False, False, False]}, index=["a", "b", "c"])
    assert to_records(frame, mask, always=("k",)) == [{"k": "a", "x": 1.0}, {"k": "b", "x": None}]
    assert to_records(frame)[2] == {"k": "c", "x": 3.0, "y": None}
