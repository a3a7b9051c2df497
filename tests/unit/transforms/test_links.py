"""Id-map glue, sync-filter values, deletes and email dedup."""

from __future__ import annotations

import pandas as pd
import pytest

from crm_sync.config import DeletePolicy
from crm_sync.transforms import (
    classify_email_matches,
    deletion_records,
    filter_values,
    last_hashes,
    link_rows,
    resolve_changes,
)

from .test_conflicts import BASE, canon, synced


def test_link_rows_round_trip_through_last_hashes(lead):
    res = resolve_changes(lead, canon("r1", **BASE), None, None)
    rows = link_rows(lead, res, ["r1"], marketo_ids=pd.Series({"r1": 77}))
    assert rows.loc[0, "marketo_id"] == "77"
    assert rows.loc[0, "person_type"] == "Lead"
    again = resolve_changes(lead, canon("r1", **BASE), None, last_hashes(rows))
    assert again.unchanged_ids.tolist() == ["r1"]


def test_direction_hashes_differ_when_a_field_changes(lead):
    before = link_rows(lead, resolve_changes(lead, canon("r1", **BASE), None, None), ["r1"])
    moved = resolve_changes(lead, canon("r1", **{**BASE, "city": "Rome"}), None, synced(**BASE))
    after = link_rows(lead, moved, ["r1"])
    assert before.loc[0, "last_hash_d2m"] != after.loc[0, "last_hash_d2m"]


def test_filter_values_for_transitions(lead, entities):
    rows = pd.DataFrame({"new_synctomkto": [True, None, False, "false"]})
    assert filter_values(rows, lead).tolist() == [True, pd.NA, False, False]
    assert filter_values(pd.DataFrame({"x": [1]}), entities["user"]).isna().all()


def test_person_delete_sets_flag_never_deletes(lead):
    policy, frame = deletion_records(lead, pd.Series(["ABC", "abc", None]))
    assert policy is DeletePolicy.FLAG
    assert frame.to_dict("records") == [{"externalPersonId": "abc", "msdIsDeleted": True}]


@pytest.mark.parametrize(
    ("name", "policy", "rows"), [("account", DeletePolicy.DELETE, 1), ("user", DeletePolicy.IGNORE, 0)]
)
def test_other_delete_policies(entities, name, policy, rows):
    got_policy, frame = deletion_records(entities[name], pd.Series(["a1"]))
    assert (got_policy, len(frame)) == (policy, rows)


def test_email_dedup_links_one_reports_several_creates_none():
    persons = pd.DataFrame({"marketo_id": [1, 2, 3, 4], "email": ["One@x.io", "two@x.io", "new@x.io", None]})
    candidates = pd.DataFrame(
        {
            "email": ["one@x.io", "two@x.io", "TWO@x.io"],
            "dynamics_id": ["c1", "l2", "c2"],
            "table": ["contact", "lead", "contact"],
        }
    )
    out = classify_email_matches(persons, candidates).set_index("marketo_id")
    assert out["action"].tolist() == ["link", "duplicate_candidates", "create", "no_email"]
    assert (out.loc["1", "dynamics_id"], out.loc["1", "table"]) == ("c1", "contact")
    assert out.loc["2", "candidates"] == "c2;l2"
    assert pd.isna(out.loc["2", "dynamics_id"])


def test_email_dedup_switched_off_always_creates():
    persons = pd.DataFrame({"marketo_id": [1], "email": ["one@x.io"]})
    candidates = pd.DataFrame({"email": ["one@x.io"], "dynamics_id": ["c1"], "table": ["contact"]})
    assert classify_email_matches(persons, candidates, enabled=False)["action"].tolist() == ["create"]


def test_email_matches_with_no_candidate_are_text_a_reason_can_be_built_from():
    persons = pd.DataFrame({"marketo_id": [1, 2], "email": ["one@x.io", None]})
    candidates = pd.DataFrame({"email": pd.Series([], dtype="str"), "dynamics_id": [], "table": []})
    out = classify_email_matches(persons, candidates)
    assert out["action"].tolist() == ["create", "no_email"]
    for column in ("dynamics_id", "table", "candidates"):
        assert out[column].dtype == "str", column
        # A float column here made new_persons' "reason" + fillna("") warn, and a later pandas raise.
        assert ("why: " + out[column].fillna("")).tolist() == ["why: ", "why: "]


def test_link_rows_integer_ids_with_gaps(lead):
    res = resolve_changes(lead, pd.concat([canon("r1", **BASE), canon("r2", **BASE)]), None, None)
    rows = link_rows(lead, res, ["r1", "r2"], marketo_ids=pd.Series({"r1": 77.0, "r2": float("nan")}))
    assert rows.loc[0, "marketo_id"] == "77"
    assert pd.isna(rows.loc[1, "marketo_id"])
