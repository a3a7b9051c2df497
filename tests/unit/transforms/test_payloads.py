"""A whole lead cycle through the transforms: rows in, write payloads out, then quiet."""

from __future__ import annotations

import pandas as pd

from crm_sync.transforms import (
    dynamics_payload,
    dynamics_to_canonical,
    last_hashes,
    link_rows,
    marketo_payload,
    marketo_to_canonical,
    resolve_changes,
)

from .conftest import dataverse_rows


def _dynamics(lead, title, phone):
    return dataverse_rows(
        lead, leadid=["L1"], lastname=["Lee"], jobtitle=[title], telephone1=[phone], leadsourcecode=[8]
    )


def _marketo(title, phone):
    return pd.DataFrame(
        {
            "id": [500],
            "externalPersonId": ["l1"],
            "lastName": ["Lee"],
            "title": [title],
            "phone": [phone],
            "leadSource": ["Web"],
        }
    )


def _cycle(lead, rows, persons, links):
    d = dynamics_to_canonical(rows, lead).frame if rows is not None else None
    m = marketo_to_canonical(persons, lead).frame if persons is not None else None
    res = resolve_changes(lead, d, m, last_hashes(links) if links is not None else None)
    return res, marketo_payload(lead, res), dynamics_payload(lead, res)


def test_new_lead_goes_to_marketo_with_keys_and_type(lead):
    _, to_m, to_d = _cycle(lead, _dynamics(lead, "Eng", "1"), None, None)
    assert to_d == []
    (record,) = to_m
    assert record["externalPersonId"] == "l1"
    assert record["msdType"] == "Lead"
    assert (record["title"], record["phone"], record["leadSource"]) == ("Eng", "1", "Web")


def test_changes_each_side_then_a_quiet_cycle(lead):
    res, _, _ = _cycle(lead, _dynamics(lead, "Eng", "1"), None, None)
    links = link_rows(lead, res, ["l1"], marketo_ids=pd.Series({"l1": 500}))
    # Dynamics changes the phone, Marketo changes the title, in the same interval.
    res, to_m, to_d = _cycle(lead, _dynamics(lead, "Eng", "2"), _marketo("CTO", "1"), links)
    assert to_m == [{"externalPersonId": "l1", "msdType": "Lead", "phone": "2"}]
    assert to_d == [{"leadid": "l1", "jobtitle": "CTO"}]
    links = link_rows(lead, res, ["l1"])
    # Both change feeds now echo what the sync wrote: nothing to write either way.
    _, to_m, to_d = _cycle(lead, _dynamics(lead, "CTO", "2"), _marketo("CTO", "2"), links)
    assert (to_m, to_d) == ([], [])


def test_lead_conflict_marketo_value_reaches_dynamics(lead):
    res, _, _ = _cycle(lead, _dynamics(lead, "Eng", "1"), None, None)
    links = link_rows(lead, res, ["l1"])
    res, to_m, to_d = _cycle(lead, _dynamics(lead, "VP", "1"), _marketo("CTO", "1"), links)
    assert to_m == []
    assert to_d == [{"leadid": "l1", "jobtitle": "CTO"}]
    assert res.conflicts["winner"].tolist() == ["marketo"]


def test_one_way_entity_never_writes_dynamics(entities):
    account = entities["account"]
    rows = dataverse_rows(account, accountid=["A1"], name=["Acme"])
    res = resolve_changes(account, dynamics_to_canonical(rows, account).frame, None, None)
    assert dynamics_payload(account, res) == []
    assert marketo_payload(account, res)[0]["externalCompanyId"] == "a1"


def test_person_feed_is_split_by_type_and_flag(lead, contact):
    from crm_sync.transforms import flagged_unlinked, persons_for_entity

    persons = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "externalPersonId": ["l1", "c1", None, None],
            "msdType": ["Lead", "Contact", None, None],
            "msdSyncToDynamics": [None, None, True, "false"],
        }
    )
    assert persons_for_entity(persons, lead)["id"].tolist() == [1]
    assert persons_for_entity(persons, contact)["id"].tolist() == [2]
    assert flagged_unlinked(persons, lead)["id"].tolist() == [3]
    assert flagged_unlinked(persons, contact).empty  # contacts are never created from Marketo by flag
