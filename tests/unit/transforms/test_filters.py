"""Sync filter: only an explicit No keeps a Dataverse row out (§4.2)."""

from __future__ import annotations

import pandas as pd

from crm_sync.transforms import apply_sync_filter, filter_transitions, sync_filter_mask


def test_only_explicit_no_is_excluded(lead):
    rows = pd.DataFrame({"new_synctomkto": [True, None, False, "false", "true", 0, 1]})
    assert sync_filter_mask(rows, lead).tolist() == [True, True, False, False, True, False, True]


def test_boolean_dtype_with_missing(lead):
    rows = pd.DataFrame({"new_synctomkto": pd.array([True, None, False], dtype="boolean")})
    assert sync_filter_mask(rows, lead).tolist() == [True, True, False]


def test_table_without_the_column_syncs_everything(lead, entities):
    rows = pd.DataFrame({"leadid": ["a", "b"]})
    assert sync_filter_mask(rows, lead).all()
    users = pd.DataFrame({"systemuserid": ["u"], "new_synctomkto": [False]})
    assert sync_filter_mask(users, entities["user"]).all()  # user has no filter configured


def test_apply_splits_kept_and_skipped(lead):
    rows = pd.DataFrame({"leadid": ["a", "b", "c"], "new_synctomkto": [None, False, True]})
    kept, skipped = apply_sync_filter(rows, lead)
    assert kept["leadid"].tolist() == ["a", "c"]
    assert skipped["leadid"].tolist() == ["b"]


def test_transitions_against_the_id_map(lead):
    rows = pd.DataFrame(
        {
            "leadid": ["A", "b", "c", "d", "e"],
            "new_synctomkto": [False, True, None, True, False],
        }
    )
    links = pd.DataFrame(
        {
            "dynamics_id": ["a", "b", "c", "d"],
            "state": ["active", "stale", "active", "active"],
            "filter_value": [True, False, None, False],
        }
    )
    out = filter_transitions(rows, lead, links)
    assert out["dynamics_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert out["transition"].tolist()[:2] == ["stale", "refresh"]
    assert out["transition"].isna().tolist() == [False, False, True, False, True]
    assert out["filter_value"].tolist() == [False, True, pd.NA, True, False]


def test_transitions_without_links(lead):
    rows = pd.DataFrame({"leadid": ["a"], "new_synctomkto": [False]})
    assert filter_transitions(rows, lead, pd.DataFrame()).transition.isna().all()
