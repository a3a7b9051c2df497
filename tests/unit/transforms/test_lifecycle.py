"""Qualification and merge decisions on the shipped lead and contact files (transforms.lifecycle)."""

from __future__ import annotations

import pandas as pd

from crm_sync.config import EntityConfig
from crm_sync.transforms.lifecycle import (
    FLAG_DELETED,
    MERGE_PERSONS,
    MOVE_LINK,
    NOTHING,
    conversions,
    merged_mask,
    merges,
)

LINK_COLUMNS = ["dynamics_id", "marketo_id", "state"]


def _links(*rows: tuple[str, str | None, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=LINK_COLUMNS)


def test_a_contact_continues_its_synced_origin_lead(entities: dict[str, EntityConfig]) -> None:
    contact = entities["contact"]
    rows = pd.DataFrame(
        {
            "contactid": ["C1", "c2", "c3", "c4"],
            "_originatingleadid_value": ["L1", "l2", None, "l4"],
        }
    )
    origins = _links(("l1", "11", "active"), ("l2", "12", "stale"), ("l4", "14", "converted"))
    linked = _links(("c4", "44", "active"))  # already has a person of its own

    found = conversions(contact, rows, linked, origins)

    # c2's lead stopped syncing (stale), c3 has no origin, c4 is linked already.
    assert found.to_dict("records") == [{"dynamics_id": "c1", "marketo_id": "11", "origin_id": "l1"}]


def test_a_retried_conversion_finds_the_lead_it_handed_over(entities: dict[str, EntityConfig]) -> None:
    rows = pd.DataFrame({"contactid": ["c1"], "_originatingleadid_value": ["l1"]})
    found = conversions(entities["contact"], rows, _links(), _links(("l1", "11", "converted")))
    assert found["marketo_id"].tolist() == ["11"]


def test_a_lead_has_no_origin_rule(entities: dict[str, EntityConfig]) -> None:
    rows = pd.DataFrame({"leadid": ["l1"]})
    assert conversions(entities["lead"], rows, _links(), _links(("x", "1", "active"))).empty


def test_what_becomes_of_each_merged_records_person(entities: dict[str, EntityConfig]) -> None:
    lead = entities["lead"]
    rows = pd.DataFrame(
        {
            "leadid": ["a", "w1", "b", "w2", "c", "w3", "d", "w4", "e"],
            "merged": [True, False, True, False, True, False, True, None, True],
            "_masterid_value": ["W1", None, "w2", None, "w3", None, "w4", None, "w1"],
            "new_synctomkto": [True, True, True, True, True, False, None, None, True],
        }
    )
    links = _links(
        ("a", "1", "active"),
        ("w1", "2", "active"),
        ("b", "3", "merged"),  # handed over in an attempt whose write failed: still its person
        ("c", "5", "active"),
        ("d", "7", "active"),
        ("w4", "7", "active"),  # already the same person (the merge was written before)
    )

    assert merged_mask(lead, rows).tolist() == [True, False, True, False, True, False, True, False, True]
    found = merges(lead, rows, links).set_index("dynamics_id")

    assert found.loc["a", ["master_id", "marketo_id", "master_marketo_id", "action"]].tolist() == [
        "w1",
        "1",
        "2",
        MERGE_PERSONS,
    ]
    assert found.loc["b", "action"] == MOVE_LINK  # survivor w2 syncs and has no person
    assert found.loc["c", "action"] == FLAG_DELETED  # survivor w3 does not sync
    assert found.loc["d", "action"] == NOTHING
    assert found.loc["e", "action"] == NOTHING  # never had a person
    assert len(found) == 5
